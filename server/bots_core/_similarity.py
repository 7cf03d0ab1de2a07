"""Implicit evidence from task similarity: a plug-in for Eq. 1 that needs no reference models.

p~ of a task is the kernel-weighted mean of the recent explicit pass rates
of its nearest observed neighbours in an embedding space and of its own
earlier outcomes (at distance 0, with a larger weight); its confidence in
[0, 1] grows with the decayed, kernel-weighted mass of those observations and
scales the task's implicit weight (docs/similarity.md). A step touches only
the evaluated tasks and their reverse neighbours: O(B k).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bots_core._config import EstimatorKind, PoolConfig
from bots_core._errors import InvalidInputError
from bots_core._neighbours import NeighbourGraph
from bots_core._state import FloatArray, PoolState
from bots_core._update import (
    Evidence,
    ImplicitEstimator,
    InterpolationEstimator,
)

# Rescale the running sums once the step scale g^-(t - origin) passes e^RESCALE_AT.
RESCALE_AT = 200.0
# Floor of a tracked mean squared error (pass rates are in [0, 1]).
MIN_MSE = 1e-4
# Per-step decay of the sums (memory about 50 steps) and the kernel weight of a
# task's own outcomes (a neighbour weighs at most 1). Chosen with
# bench/tune_similarity.py on the families world, seeds 100-119, apart from
# the seeds of the reported table (docs/similarity.md): TTB(100 %) 0.812 with
# (0.9, 0), the estimator before; 0.799 with (0.98, 0); 0.770 with the task's
# own outcomes alone; 0.724 with (0.98, 32), and within 0.002 of that for
# memory 0.99 or weight 64.
MEMORY = 0.98
SELF_WEIGHT = 32.0

Weights = npt.NDArray[np.float64]


class _ErrorTracker:
    """Moving average (momentum gamma) of an estimator's squared error on evaluated tasks.

    The binomial noise of each observed rate, r (1 - r) / (t - 1) (unbiased
    for p (1 - p) / t), is subtracted, so the average estimates the error
    against the true pass rates.
    """

    def __init__(self) -> None:
        self.mse = math.nan

    def record(self, p: FloatArray, weight: FloatArray, ev: Evidence, idx_mask: npt.NDArray[np.bool_], momentum: float) -> None:  # fmt: skip
        w = weight[idx_mask]
        if not len(w) or float(w.sum()) <= 0.0:
            return
        s, t = ev.successes[idx_mask], ev.trials[idx_mask]
        r = s / t
        noise = np.where(t > 1.0, r * (1.0 - r) / np.maximum(t - 1.0, 1.0), 0.0)
        batch = float(np.average((p[idx_mask] - r) ** 2 - noise, weights=w))
        batch = max(batch, MIN_MSE)
        self.mse = batch if math.isnan(self.mse) else momentum * self.mse + (1 - momentum) * batch


@dataclass(frozen=True)
class EstimatorState:
    """What a similarity estimator carries from step to step (its own arrays, copied).

    The graph is not in it: a pool rebuilds it from its embedding codes, as it
    was built, over the first ``tasks`` tasks (``bots_core._pool_estimator``).

    Attributes:
        tasks: Tasks the graph covers.
        origin: Step the sums' scale is relative to.
        observed: Whether any outcome was observed.
        mse: The similarity estimate's tracked squared error (NaN before any).
        combined_mse: The interpolation's tracked error in a CombinedEstimator;
            None for a SimilarityEstimator alone.
        sum_s: Scaled, kernel-weighted successes per task (its own and its neighbours').
        sum_t: The same for trials.
        p: p~ per task as maintained (sum_s / sum_t where sum_t > 0, else 0.5).
    """

    tasks: int
    origin: int
    observed: bool
    mse: float
    combined_mse: float | None
    sum_s: FloatArray
    sum_t: FloatArray
    p: FloatArray


class SimilarityEstimator:
    """p~_i = sum_j K_ij e_j s_j / sum_j K_ij e_j t_j over task i itself and its neighbours j.

    s_j and t_j are task j's explicit successes and trials, e_j = g^(age)
    decays each observation with the estimator's memory g (default
    ``MEMORY``), and K_ij is the graph's kernel weight; task i's own outcomes
    enter with K_ii = ``self_weight``. The confidence of task i is
    m_i / (m_i + m0) with m_i = sum_j K_ij e_j t_j (decayed, kernel-weighted
    trials) and m0 = ``half_mass`` (default: the pool's pseudo-rollout count
    n), so one fresh neighbour observation of n rollouts at kernel weight 1
    gives 1/2. Only explicit outcomes enter: implicit pseudo-counts never feed
    back.

    Why a task's own outcomes count, and this much: the estimate is used for
    a task while it is not evaluated, and its own earlier pass rate predicts
    its present one better than any neighbour's (neighbours differ by their
    own difficulty; the task only by how the learner moved since). The pool's
    posterior forgets them with lambda; here they keep informing p~ at the
    bounded implicit weight. Why a longer memory than the pool's momentum:
    one task is evaluated about every N / B steps, while pass rates drift
    slowly.

    The sums are kept scaled by g^-(t - origin), so that a step adds to
    its evaluated tasks and their reverse neighbours only (O(B k)) and decay
    costs nothing; they are rescaled when the scale grows large.

    Args:
        graph: The pool's neighbour graph (tasks 0 .. graph.task_count - 1;
            later tasks get no implicit evidence until the graph is rebuilt).
        half_mass: m0 (> 0); None = the pool's ``pseudo_rollouts``.
        memory: g in [0, 1): the per-step decay of every observation.
        self_weight: K_ii >= 0, the kernel weight of a task's own outcomes
            (neighbours weigh at most 1).
    """

    def __init__(
        self,
        graph: NeighbourGraph,
        half_mass: float | None = None,
        *,
        memory: float = MEMORY,
        self_weight: float = SELF_WEIGHT,
    ) -> None:
        if half_mass is not None and not (math.isfinite(half_mass) and half_mass > 0):
            raise InvalidInputError(f"half_mass must be > 0, got {half_mass}")
        if not 0.0 <= memory < 1.0:
            raise InvalidInputError(f"memory must be in [0, 1), got {memory}")
        if not (math.isfinite(self_weight) and self_weight >= 0.0):
            raise InvalidInputError(f"self_weight must be >= 0, got {self_weight}")
        n = graph.task_count
        self.graph = graph
        self.half_mass = half_mass
        self.memory = memory
        self.self_weight = self_weight
        self.sum_s: FloatArray = np.zeros(n)  # scaled kernel-weighted successes (self + neighbours)
        self.sum_t: FloatArray = np.zeros(n)  # the same for trials
        self.p: FloatArray = np.full(n, 0.5)  # maintained: sum_s / sum_t where sum_t > 0
        self.origin = 0  # step the scale is relative to
        self.observed = False
        self.errors = _ErrorTracker()
        self._conf: FloatArray | None = None  # buffer of confidence()

    # ------------------------------------------------------------- state
    def to_state(self) -> EstimatorState:
        """A copy of what this estimator carries from step to step (see :meth:`from_state`)."""
        return EstimatorState(
            self.graph.task_count, self.origin, self.observed, self.errors.mse, None,
            self.sum_s.copy(), self.sum_t.copy(), self.p.copy(),
        )  # fmt: skip

    @classmethod
    def from_state(
        cls, graph: NeighbourGraph, state: EstimatorState, half_mass: float | None = None
    ) -> SimilarityEstimator:
        """The estimator :meth:`to_state` saved, over ``graph`` (the graph it had).

        Raises:
            InvalidInputError: the arrays do not match the graph.
        """
        n = graph.task_count
        if state.tasks != n or any(len(a) != n for a in (state.sum_s, state.sum_t, state.p)):
            raise InvalidInputError(f"estimator state of {state.tasks} tasks for a graph of {n}")
        est = cls(graph, half_mass)
        est.sum_s = np.array(state.sum_s, dtype=np.float64)
        est.sum_t = np.array(state.sum_t, dtype=np.float64)
        est.p = np.array(state.p, dtype=np.float64)
        est.origin = state.origin
        est.observed = state.observed
        est.errors.mse = state.mse
        return est

    # ------------------------------------------------------------- decay
    @staticmethod
    def _log_keep(g: float) -> float:
        return math.log(g) if g > 0.0 else -math.inf

    def _exponent(self, step: int, log_keep: float) -> float:
        """-(step - origin) log g: the log of the scale at ``step``."""
        return 0.0 if step == self.origin else -(step - self.origin) * log_keep

    def decay(self, state: PoolState) -> float:
        """g^(t - origin) at the pool's current step: scaled sums times this are decayed sums."""
        return math.exp(-self._exponent(state.steps_applied, self._log_keep(self.memory)))

    # ---------------------------------------------------------- protocol
    def observe(self, state: PoolState, evidence: Evidence) -> None:
        """Adds the step's explicit outcomes to the sums of their tasks and reverse neighbours."""
        n = self.graph.task_count
        inside = evidence.indices < n
        if not inside.any():
            return
        conf = self.confidence(state, evidence.indices[inside])
        full = np.zeros(len(evidence.indices))
        full[inside] = conf
        p_full = np.zeros(len(evidence.indices))
        p_full[inside] = self.p[evidence.indices[inside]]
        self.errors.record(p_full, full, evidence, inside, state.config.momentum)

        step = state.steps_applied
        e = self._exponent(step, self._log_keep(self.memory))
        if e > RESCALE_AT:
            f = math.exp(-e)  # 0 when g = 0: only this step counts
            self.sum_s *= f
            self.sum_t *= f
            self.origin = step
            e = 0.0
        scale = math.exp(e)
        idx = evidence.indices[inside]
        s, t = evidence.successes[inside], evidence.trials[inside]
        owner, holder, w = self.graph.reverse(idx)
        # Each task itself, at kernel weight self_weight (indices are distinct).
        if self.self_weight > 0.0:
            owner = np.concatenate([np.arange(len(idx), dtype=np.int64), owner])
            holder = np.concatenate([idx.astype(np.int64), holder])
            w = np.concatenate([np.full(len(idx), self.self_weight), w.astype(np.float64)])
        self.observed = True  # even when no sum holds the outcomes (no reverse neighbours)
        if not len(holder):
            return
        ws = w.astype(np.float64) * scale
        np.add.at(self.sum_s, holder, ws * s[owner])
        np.add.at(self.sum_t, holder, ws * t[owner])
        touched = np.unique(holder)
        t = self.sum_t[touched]
        self.p[touched] = np.where(t > 0.0, self.sum_s[touched] / np.where(t > 0, t, 1.0), 0.5)

    def confidence(
        self, state: PoolState, tasks: npt.NDArray[np.int64] | None = None
    ) -> FloatArray:
        """m / (m + m0) of the given tasks (all graph tasks when None) at the pool's current step.

        Computed as T / (T + m0 / decay) on the scaled sums: two passes over
        the pool. For all tasks the result lives in a buffer that the next
        call overwrites.
        """
        m0 = self.half_mass if self.half_mass is not None else state.config.pseudo_rollouts
        d = self.decay(state)
        if tasks is not None:
            t = self.sum_t[tasks]
            return np.asarray(t * d / (t * d + m0), dtype=np.float64)
        if d == 0.0:
            return np.zeros(len(self.sum_t))
        if self._conf is None:
            self._conf = np.empty(len(self.sum_t))
        out = self._conf
        np.add(self.sum_t, m0 / d, out=out)
        np.divide(self.sum_t, out, out=out)
        return out

    def estimate(self, state: PoolState) -> tuple[FloatArray, Weights] | None:
        """(p~, confidence) for every task of the pool, or None before any observation.

        The second array is a weight in [0, 1] that scales each task's
        implicit weight rho n (the generic path of apply_step); tasks beyond the graph
        get 0.
        """
        if not self.observed:
            return None
        conf = self.confidence(state)
        n = state.task_count
        if n == self.graph.task_count:
            return self.p, conf
        p = np.full(n, 0.5)
        w = np.zeros(n)
        m = min(n, self.graph.task_count)
        p[:m], w[:m] = self.p[:m], conf[:m]
        return p, w


class CombinedEstimator:
    """Similarity and interpolation together (preset ``bots+similarity``).

    For a task with reference rates and neighbour observations, p~ is the
    average of the two estimates weighted by confidence / mean squared
    error, each error tracked on the evaluated tasks (noise-corrected, with
    the pool's momentum); its weight is 1, as with the interpolation alone.
    A task without reference rates gets the similarity estimate at its
    confidence. Before either estimator has a tracked error the two count
    equally.
    """

    def __init__(self, similarity: SimilarityEstimator) -> None:
        self.similarity = similarity
        self.interpolation = InterpolationEstimator()
        self.errors = _ErrorTracker()  # the interpolation's

    def to_state(self) -> EstimatorState:
        """The similarity estimator's state with this estimator's own tracked error."""
        return dataclasses.replace(self.similarity.to_state(), combined_mse=self.errors.mse)

    @classmethod
    def from_state(cls, graph: NeighbourGraph, state: EstimatorState) -> CombinedEstimator:
        """Inverse of :meth:`to_state` (the interpolation's state lives in the pool)."""
        est = cls(SimilarityEstimator.from_state(graph, state))
        est.errors.mse = math.nan if state.combined_mse is None else state.combined_mse
        return est

    def observe(self, state: PoolState, evidence: Evidence) -> None:
        """Tracks the interpolation's error, then lets both estimators observe."""
        idx = evidence.indices
        has = ~np.isnan(state.weak[idx]) if len(idx) else np.zeros(0, dtype=bool)
        if not math.isnan(state.capability) and has.any():
            w, g = state.weak[idx], state.strong[idx]
            p = np.clip(np.where(has, w + state.capability * (g - w), 0.0), 0.0, 1.0)
            self.errors.record(p, has.astype(np.float64), evidence, has, state.config.momentum)
        self.interpolation.observe(state, evidence)
        self.similarity.observe(state, evidence)

    def estimate(self, state: PoolState) -> tuple[FloatArray, Weights] | None:
        """See the class docstring."""
        a = self.interpolation.estimate(state)
        b = self.similarity.estimate(state)
        if b is None:
            if a is None:
                return None
            return a[0], a[1].astype(np.float64)
        p_s, c_s = b
        if a is None:
            return p_s, c_s
        p_i, has = a
        mse_i, mse_s = self.errors.mse, self.similarity.errors.mse
        ratio = 1.0 if math.isnan(mse_i) or math.isnan(mse_s) else mse_i / mse_s
        # Weights of the two estimates: 1 / mse_i and c_s / mse_s, scaled by mse_i.
        ws = c_s * ratio
        p = np.where(has, (p_i + ws * p_s) / (1.0 + ws), p_s)
        return p, np.where(has, 1.0, c_s)


AnyEstimator = ImplicitEstimator | SimilarityEstimator | CombinedEstimator


def estimator_for(config: PoolConfig, graph: NeighbourGraph | None) -> AnyEstimator | None:
    """The estimator a pool's config asks for; None means ``apply_step``'s default.

    Raises:
        InvalidInputError: similarity asked for, but the pool has no embeddings.
    """
    if config.estimator is EstimatorKind.INTERPOLATION:
        return None
    if graph is None:
        raise InvalidInputError(
            f"estimator {config.estimator.value!r} needs task embeddings (bots embed)"
        )
    sim = SimilarityEstimator(graph)
    return sim if config.estimator is EstimatorKind.SIMILARITY else CombinedEstimator(sim)

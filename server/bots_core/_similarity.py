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
    LAZY_STEPS,
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
# the seeds of the reported table (docs/similarity.md): TTB(100 %) 0.818 with
# (0.9, 0), the estimator before; 0.802 with (0.98, 0); 0.771 with the task's
# own outcomes alone; 0.729 with (0.98, 32), and within 0.003 of that for
# memory 0.99 or weight 64.
MEMORY = 0.98
SELF_WEIGHT = 32.0
# Folded steps (Lazy.sim) store a task's posterior relative to what the pending
# steps add, which for a task observed u steps after the columns were last
# written includes the pool-wide sum of the earlier steps, up to g^-u times
# larger than its own term. The columns are written whole every LAZY_STEPS
# steps, so folding loses at most log10(g^-LAZY_STEPS / (1 - g)) digits: about
# 2.8 with the default memory (0.98). Below this bound on g^LAZY_STEPS steps
# take the whole-array path instead.
FOLD_MIN_DECAY = 1e-3

Weights = npt.NDArray[np.float64]


class _ErrorTracker:
    """Moving average (momentum gamma) of an estimator's squared error on evaluated tasks.

    The binomial noise of each observed rate, r (1 - r) / (t - 1) (unbiased
    for p (1 - p) / t), is subtracted, so the average estimates the error
    against the true pass rates.
    """

    def __init__(self) -> None:
        self.mse = math.nan

    def record(self, p: FloatArray, w: FloatArray, s: FloatArray, t: FloatArray, momentum: float) -> None:  # fmt: skip
        """Folds in one batch: estimates ``p`` with weights ``w`` against ``s`` / ``t`` observed."""
        if not len(w) or float(w.sum()) <= 0.0:
            return
        r = s / t
        noise = np.where(t > 1.0, r * (1.0 - r) / np.maximum(t - 1.0, 1.0), 0.0)
        batch = float(np.average((p - r) ** 2 - noise, weights=w))
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
        den: m_i + m0 per task at its latest observation (the confidence's
            denominator, see :class:`SimilarityEstimator`); None in states
            saved before it existed (:func:`complete_state` fills it).
    """

    tasks: int
    origin: int
    observed: bool
    mse: float
    combined_mse: float | None
    sum_s: FloatArray
    sum_t: FloatArray
    p: FloatArray
    den: FloatArray | None = None


class SimilarityEstimator:
    """p~_i = sum_j K_ij e_j s_j / sum_j K_ij e_j t_j over task i itself and its neighbours j.

    s_j and t_j are task j's explicit successes and trials, e_j = g^(age)
    decays each observation with the estimator's memory g (default
    ``MEMORY``), and K_ij is the graph's kernel weight; task i's own outcomes
    enter with K_ii = ``self_weight``. The confidence of task i at step t is
    c_i = m_i(t) / (m_i(u) + m0) with m_i = sum_j K_ij e_j t_j (decayed,
    kernel-weighted trials), u <= t the latest step an outcome entered task
    i's sums, and m0 = ``half_mass`` (default: the pool's pseudo-rollout count
    n): at an observation it is m / (m + m0), so one fresh neighbour
    observation of n rollouts at kernel weight 1 gives 1/2, and from there it
    decays with the sums' memory g until the next one. It stays in [0, 1).
    Only explicit outcomes enter: implicit pseudo-counts never feed back.

    Why the denominator is frozen at the observation: then c_i p~_i =
    (s_i / den_i) g^(t - origin), a per-task number times a pool-wide one,
    and so is c_i (1 - p~_i). A step of a pool that uses this estimator alone
    adds the product to ``bots_core.Lazy.sim`` and rewrites only the tasks whose
    sums it changed, in one compiled pass (``bots_core._kernel.observe_similarity``):
    O(B k), not O(pool).

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
        # One row per task, read and written together by a step (one cache line
        # for two tasks): sum_s, sum_t, p and den (the properties of the same names).
        self.sums: FloatArray = np.zeros((n, 4))
        self.sums[:, 2] = 0.5
        self.sums[:, 3] = 1.0
        self.origin = 0  # step the scale is relative to
        self.observed = False
        self.errors = _ErrorTracker()
        self._conf: FloatArray | None = None  # buffer of confidence()
        # Whether steps fold this estimator's evidence into the pool's Lazy.sim:
        # alone and with a memory long enough (FOLD_MIN_DECAY); not inside a
        # CombinedEstimator, whose estimate is mixed anew every step.
        self.folds = memory**LAZY_STEPS >= FOLD_MIN_DECAY

    @property
    def sum_s(self) -> FloatArray:
        """Scaled, kernel-weighted successes per task (its own and its neighbours')."""
        return self.sums[:, 0]

    @property
    def sum_t(self) -> FloatArray:
        """The same for trials."""
        return self.sums[:, 1]

    @property
    def p(self) -> FloatArray:
        """p~ per task as maintained: sum_s / sum_t where sum_t > 0, else 0.5."""
        return self.sums[:, 2]

    @property
    def den(self) -> FloatArray:
        """m + m0 at each task's latest observation (any positive number before one)."""
        return self.sums[:, 3]

    # ------------------------------------------------------------- state
    def to_state(self) -> EstimatorState:
        """A copy of what this estimator carries from step to step (see :meth:`from_state`)."""
        return EstimatorState(
            self.graph.task_count, self.origin, self.observed, self.errors.mse, None,
            self.sum_s.copy(), self.sum_t.copy(), self.p.copy(), self.den.copy(),
        )  # fmt: skip

    @classmethod
    def from_state(
        cls, graph: NeighbourGraph, state: EstimatorState, half_mass: float | None = None
    ) -> SimilarityEstimator:
        """The estimator :meth:`to_state` saved, over ``graph`` (the graph it had).

        Raises:
            InvalidInputError: the arrays do not match the graph, or the state
                has no ``den`` (complete it first: :func:`complete_state`).
        """
        n = graph.task_count
        if state.den is None:
            raise InvalidInputError("estimator state without its denominators")
        if state.tasks != n or any(
            len(a) != n for a in (state.sum_s, state.sum_t, state.p, state.den)
        ):
            raise InvalidInputError(f"estimator state of {state.tasks} tasks for a graph of {n}")
        est = cls(graph, half_mass)
        est.sums = np.ascontiguousarray(
            np.stack([state.sum_s, state.sum_t, state.p, state.den], axis=1), dtype=np.float64
        )
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

    def _half_mass(self, state: PoolState) -> float:
        return self.half_mass if self.half_mass is not None else state.config.pseudo_rollouts

    def prepare_fold(self, state: PoolState) -> float:
        """What this step adds to ``Lazy.sim`` per unit of implicit weight: g^(t - origin).

        Gives the pool its similarity terms first if it has none (all 0).
        """
        if state.sim_terms is None:
            n = state.task_count
            state.set_sim_terms(np.zeros(n), np.zeros(n))
        return self.decay(state)

    # ---------------------------------------------------------- protocol
    def observe(self, state: PoolState, evidence: Evidence) -> None:
        """Adds the step's explicit outcomes to the sums of their tasks and reverse neighbours."""
        n = self.graph.task_count
        inside = evidence.indices < n
        if not inside.any():
            return
        idx = np.ascontiguousarray(evidence.indices[inside], dtype=np.int64)
        s = np.ascontiguousarray(evidence.successes[inside], dtype=np.float64)
        t = np.ascontiguousarray(evidence.trials[inside], dtype=np.float64)
        self.errors.record(self.p[idx], self.confidence(state, idx), s, t, state.config.momentum)

        step = state.steps_applied
        e = self._exponent(step, self._log_keep(self.memory))
        if e > RESCALE_AT:
            self._rescale(state, step, math.exp(-e))  # 0 when g = 0: only this step counts
            e = 0.0
        self.observed = True  # even when no sum holds the outcomes (no reverse neighbours)
        from bots_core._select import kernel  # compiled; imported on first use

        prior = _E
        if self.folds:
            self.prepare_fold(state)  # the pool's terms exist
            rows = state.kernel_rows()
            lin = state.lazy.coefficients()
            uniform = state.derived.uniform_prior
            if uniform is not None:  # saves two reads per task
                prior = np.array(uniform, dtype=np.float64)
        else:
            rows, lin = _NO_ROWS, _NO_LIN
        g = self.graph
        kernel().observe_similarity(
            idx, s, t, g.rev_ptr, g.rev_src, g.rev_w, float(self.self_weight), math.exp(e),
            math.exp(-e), float(self._half_mass(state)), self.sums, self.folds, prior, *rows, lin,
        )  # fmt: skip
        if self.folds:
            state.changed()

    @staticmethod
    def give_terms(state: PoolState, s: FloatArray, t: FloatArray, den: FloatArray) -> None:
        """Sets the pool's (qa, qb) from sums and denominators of its first tasks (0 beyond).

        c p~ = qa g^(t - origin) and c (1 - p~) = qb g^(t - origin): the same
        arithmetic as the compiled step (``bots_core._kernel.observe_similarity``).
        """
        pad = np.zeros(state.task_count - len(s))
        state.set_sim_terms(np.concatenate([s / den, pad]), np.concatenate([(t - s) / den, pad]))

    def _rescale(self, state: PoolState, step: int, f: float) -> None:
        """Moves the sums' origin to ``step`` (multiplying them by ``f``), terms included.

        The terms of every task change, so a pool folding this estimator first
        writes its pending steps into every task: O(pool), once every
        RESCALE_AT / -log g steps (about 10k with the default memory).
        """
        if self.folds:
            state.normalize()
        self.sums[:, :2] *= f
        self.origin = step
        if self.folds and state.sim_terms is not None:
            self.give_terms(state, self.sum_s, self.sum_t, self.den)

    def confidence(
        self, state: PoolState, tasks: npt.NDArray[np.int64] | None = None
    ) -> FloatArray:
        """m(t) / (m(u) + m0) of the given tasks (all graph tasks when None) at the pool's current step.

        u is each task's latest observation (see the class docstring). For all
        tasks the result lives in a buffer that the next call overwrites.
        """
        d = self.decay(state)
        if tasks is not None:
            return np.asarray(self.sum_t[tasks] * d / self.den[tasks], dtype=np.float64)
        if self._conf is None:
            self._conf = np.empty(len(self.sum_t))
        out = self._conf
        np.multiply(self.sum_t, d, out=out)
        np.divide(out, self.den, out=out)
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
        similarity.folds = False  # its estimate is mixed with the interpolation's every step
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
            p = np.clip(w[has] + state.capability * (g[has] - w[has]), 0.0, 1.0)
            s, t = evidence.successes[has], evidence.trials[has]
            self.errors.record(p, np.ones(len(p)), s, t, state.config.momentum)
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
_E = np.zeros(0)
_NO_ROWS = (_E, _E, _E, _E, _E, np.zeros(0, dtype=bool), _E, np.zeros((0, 2)))
_NO_LIN = np.zeros(5)


def complete_state(state: PoolState, saved: EstimatorState) -> EstimatorState:
    """``saved`` with its denominators; a pool whose steps fold it gets its similarity terms.

    Call it when a pool and its estimator's state are loaded together, before
    anything reads the pool's posteriors: pending steps (``Lazy.sim``) read
    the terms, which are a function of the saved sums. A state saved before
    the denominators existed comes from a pool whose steps wrote every
    posterior whole, so nothing pending reads its terms: its denominators are
    taken as if every task had just been observed.

    Raises:
        InvalidInputError: the state covers more tasks than the pool has.
    """
    n = saved.tasks
    if n > state.task_count or any(len(a) != n for a in (saved.sum_s, saved.sum_t, saved.p)):
        raise InvalidInputError(
            f"estimator state of {n} tasks does not fit a pool of {state.task_count}"
        )
    den = saved.den
    if den is None:
        log_g = math.log(MEMORY)
        d = math.exp((state.steps_applied - saved.origin) * log_g)
        den = saved.sum_t * d + state.config.pseudo_rollouts
        saved = dataclasses.replace(saved, den=den)
    elif len(den) != n:
        raise InvalidInputError(f"estimator state of {n} tasks with {len(den)} denominators")
    if state.config.estimator is EstimatorKind.SIMILARITY:
        SimilarityEstimator.give_terms(state, saved.sum_s, saved.sum_t, den)
    return saved


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

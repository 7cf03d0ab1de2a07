"""The generalized BOTS update (docs/algorithm.md §2) and the interpolation plug-in (docs/algorithm.md §3)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bots_core._errors import CorruptStateError, InvalidInputError, UnknownTaskError, shorten
from bots_core._runs import RunState, run_offset, sharing
from bots_core._state import FloatArray, Lazy, PoolState

IntArray = npt.NDArray[np.int64]
# What an estimator's second array may be: a mask, or weights in [0, 1].
Weights = npt.NDArray[np.bool_] | npt.NDArray[np.float64]

# Most trials one outcome (and one task in one step) may carry. Far beyond any
# real rollout count, and small enough that no sum of evidence can overflow.
MAX_TRIALS = 1e12


@dataclass(frozen=True)
class Evidence:
    """Explicit evidence of one step: distinct task indices with their counts."""

    indices: IntArray
    successes: FloatArray
    trials: FloatArray

    def __post_init__(self) -> None:
        n = len(self.indices)
        if len(self.successes) != n or len(self.trials) != n:
            raise InvalidInputError("evidence arrays differ in length")
        idx = self.indices
        if n > 1 and not bool(np.all(idx[1:] > idx[:-1])) and len(np.unique(idx)) != n:
            raise InvalidInputError("evidence holds a task twice; aggregate it first")

    @classmethod
    def empty(cls) -> Evidence:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.float64))


def check_counts(key: str, successes: float, trials: float) -> None:
    """Raises InvalidInputError unless 0 <= successes <= trials, trials > 0, finite."""
    if not (math.isfinite(successes) and math.isfinite(trials)):
        raise InvalidInputError(f"task {shorten(key)}: counts must be finite")
    if trials <= 0:
        raise InvalidInputError(f"task {shorten(key)}: trials must be > 0, got {trials}")
    if trials > MAX_TRIALS:
        raise InvalidInputError(
            f"task {shorten(key)}: trials must be <= {MAX_TRIALS:g}, got {trials}"
        )
    if successes < 0:
        raise InvalidInputError(f"task {shorten(key)}: successes must be >= 0, got {successes}")
    if successes > trials:
        raise InvalidInputError(
            f"task {shorten(key)}: successes ({successes}) exceed trials ({trials})"
        )


def aggregate(state: PoolState, outcomes: Iterable[tuple[str, float, float]]) -> Evidence:
    """Validates (key, successes, trials) triples and sums them per task.

    Sums use ``math.fsum`` (exactly rounded), so the result does not depend on
    the order of the outcomes. Indices come out sorted.

    Raises:
        InvalidInputError: malformed counts.
        UnknownTaskError: a key the pool does not hold.
    """
    items = list(outcomes)
    keys = [o[0] for o in items]
    s = np.array([o[1] for o in items], dtype=np.float64)
    t = np.array([o[2] for o in items], dtype=np.float64)
    bad = ~(np.isfinite(s) & np.isfinite(t) & (t > 0) & (t <= MAX_TRIALS) & (s >= 0) & (s <= t))
    if bad.any():
        j = int(np.argmax(bad))
        check_counts(keys[j], float(s[j]), float(t[j]))  # raises with the precise reason
    idx = state.index.lookup(keys)
    if len(idx) and int(idx.min()) < 0:
        key = keys[int(np.argmax(idx < 0))]
        raise UnknownTaskError(f"task {shorten(key)} is not in pool {shorten(state.name)}")
    order = np.argsort(idx, kind="stable")
    idx, s, t = idx[order], s[order], t[order]
    if len(idx) < 2 or bool(np.all(idx[1:] != idx[:-1])):
        return Evidence(idx, s, t)
    # Repeated tasks: exactly rounded sums, so the order of outcomes cannot matter.
    uniq, starts = np.unique(idx, return_index=True)
    bounds = [*starts.tolist(), len(idx)]
    return Evidence(
        uniq.astype(np.int64),
        np.array([math.fsum(s[a:b]) for a, b in itertools.pairwise(bounds)], dtype=np.float64),
        np.array([math.fsum(t[a:b]) for a, b in itertools.pairwise(bounds)], dtype=np.float64),
    )


class ImplicitEstimator(Protocol):
    """Plug-in that estimates success probabilities of tasks not evaluated.

    ``observe`` sees each step's explicit evidence before the update;
    ``estimate`` returns (p~, weight) for every task, or None when it has
    nothing to say yet. The weight is a boolean mask (False: no implicit
    evidence) or a float array in [0, 1] that scales each task's implicit
    weight rho n (a confidence, e.g. the similarity plug-in's).
    """

    def observe(self, state: PoolState, evidence: Evidence) -> None: ...

    def estimate(self, state: PoolState) -> tuple[FloatArray, Weights] | None: ...


class InterpolationEstimator:
    """p~_k = clip(w_k + mu~ (g_k - w_k), 0, 1) with mu~ an EMA of mu_t (docs/algorithm.md §3).

    mu_t is computed over the tasks of the batch that have reference rates.
    It lives in ``state.capability`` so that it is saved with the pool.
    """

    def observe(self, state: PoolState, evidence: Evidence) -> None:
        _fold_capability(state, batch_capability(state, evidence))

    def estimate(self, state: PoolState) -> tuple[FloatArray, npt.NDArray[np.bool_]] | None:
        d = state.derived
        if math.isnan(state.capability) or d.ref_count == 0:
            return None
        p = d.gap * state.capability
        p += d.weak0
        np.clip(p, 0.0, 1.0, out=p)
        return p, d.has_ref


def _moving(previous: float, mu: float | None, momentum: float) -> float:
    """gamma previous + (1 - gamma) mu_t; mu_t itself at the first batch, previous without one."""
    if mu is None:
        return previous
    if math.isnan(previous):
        return mu
    return momentum * previous + (1.0 - momentum) * mu


def _fold_capability(state: PoolState, mu: float | None) -> None:
    """The pool's mu~ after a batch whose mu_t is ``mu``."""
    state.capability = _moving(state.capability, mu, state.config.momentum)


def batch_capability(state: PoolState, evidence: Evidence) -> float | None:
    """mu_t of one batch, or None when it has no referenced task or the gap is too small."""
    has_ref = state.derived.has_ref[evidence.indices]
    if not has_ref.any():
        return None
    idx = evidence.indices[has_ref]
    rates = evidence.successes[has_ref] / evidence.trials[has_ref]
    mean_w = float(np.mean(state.weak[idx]))
    mean_g = float(np.mean(state.strong[idx]))
    gap = mean_g - mean_w
    if gap == 0.0 or abs(gap) < state.config.min_reference_gap:
        return None
    mu = (float(np.mean(rates)) - mean_w) / gap
    # With min_reference_gap = 0 a tiny gap can overflow mu; never store inf.
    return mu if math.isfinite(mu) else None


@dataclass(frozen=True)
class StepResult:
    """What one applied step did."""

    evaluated: int
    effective_task_ratio: float  # NaN when nothing was evaluated
    positive_ratio: float  # pass rate > 0
    below_one_ratio: float  # pass rate < 1
    capability: float  # mu~ after the step (NaN if still unknown)


DEFAULT_ESTIMATOR = InterpolationEstimator()


def apply_step(
    state: PoolState,
    evidence: Evidence,
    estimator: ImplicitEstimator = DEFAULT_ESTIMATOR,
    run: str = "",
) -> StepResult:
    """Applies Eq. 1 to every task of the pool, in place, as a step of ``run``.

    Tasks in ``evidence`` are the selected (evaluated) tasks: they decay and
    receive their explicit counts at full weight. Every other task decays and
    receives rho * n pseudo-observations at the estimated rate p~. When K runs
    share the pool, a step forgets and adds implicit evidence for 1/K of a
    round, and the run's rates are moved to the pool's capability
    (docs/algorithm.md §8); with one run this is exactly Eq. 1.
    """
    cfg = state.config
    lam, rho, n = cfg.forgetting, cfg.implicit_weight, cfg.pseudo_rollouts
    idx, s, t = evidence.indices, evidence.successes, evidence.trials
    run_state = state.runs.get(run) or RunState()  # registered once the step is valid
    k = sharing(state.runs, run, state.steps_applied)
    if k > 1:
        lam = 1.0 - (1.0 - lam) ** (1.0 / k)
        rho = rho / k
    if len(idx) and (idx.min() < 0 or idx.max() >= state.task_count):
        raise InvalidInputError("evidence index out of range")
    if not (
        np.all(np.isfinite(s)) and np.all(np.isfinite(t)) and np.all(s >= 0) and np.all(s <= t)
    ):
        raise InvalidInputError("evidence counts must be finite with 0 <= successes <= trials")
    raw = evidence
    gap = state.derived.gap[idx]
    move = run_offset(state.runs, run, state.steps_applied)
    if move is not None and np.any(gap != 0.0):
        # The run's rates as the pool would see them: y - (g - w) delta_r, clipped.
        rate = np.clip(s / t - gap * move, 0.0, 1.0)
        s = np.where(gap != 0.0, rate * t, s)
    keep = 1.0 - lam
    # An estimator may fold its steps too (the similarity plug-in alone: prepare_fold).
    prepare_fold = getattr(estimator, "prepare_fold", None) if getattr(estimator, "folds", False) else None  # fmt: skip
    lazy = (estimator is DEFAULT_ESTIMATOR or prepare_fold is not None) and _lazy_due(state, keep)
    # Selected tasks: explicit evidence at full weight, no implicit term. Computed
    # first, so that nothing is written when the result would not be finite.
    from bots_core._select import kernel  # compiled; bots_core._select imports this module

    b = len(idx)
    rows = state.kernel_rows()
    new_alpha, new_beta, mean = np.empty(b), np.empty(b), np.empty(b)
    s = np.ascontiguousarray(s, dtype=np.float64)
    t = np.ascontiguousarray(t, dtype=np.float64)
    if not kernel().step_batch(
        idx, s, t, *rows, state.lazy.coefficients(), keep, lam, new_alpha, new_beta, mean
    ):
        raise CorruptStateError(
            f"pool {shorten(state.name)}: this evidence would make a posterior non-finite"
        )
    state.runs[run] = run_state
    _observe_offset(state, run_state, raw, gap, mean)

    _record_quality(state, raw)
    mu = batch_capability(state, raw)  # once for the pool and the run
    if estimator is DEFAULT_ESTIMATOR:
        _fold_capability(state, mu)
    else:
        estimator.observe(state, raw)
    _observe_run(state, run_state, mu)

    if lazy and _fold_is_exact_enough(state, rho * n):
        if prepare_fold is not None:
            _fold_decay(state.lazy, lam)
            state.lazy.sim += rho * n * prepare_fold(state)
            state.lazy.steps += 1
            state.changed()
        else:
            _fold_step(state, lam, rho * n)
    else:
        state.normalize()
        if estimator is DEFAULT_ESTIMATOR:
            _decay_and_interpolate(state, lam, rho * n)
        else:
            _decay_and_estimate(state, estimator, lam, rho * n)
    state.store_at(idx, new_alpha, new_beta)

    state.steps_applied += 1
    result = _step_stats(raw, state.capability)
    state.record_etr(result.effective_task_ratio)
    run_state.steps += 1
    run_state.last_step = state.steps_applied
    if not math.isnan(result.effective_task_ratio):
        run_state.recent_etr.append(result.effective_task_ratio)
    state.diagnostics.record_ratios(result.positive_ratio, result.below_one_ratio)
    return result


BLOCK = 1 << 15  # tasks per block of the fused update: a block's arrays stay in cache

# Steps folded into ``state.lazy`` before the columns are written whole again,
# and the smallest scale (product of 1 - lambda) allowed meanwhile. Both are
# checked at the start of a step, from the pool's own history, so every
# replica and every in-process engine writes the columns at the same steps.
LAZY_STEPS = 128
LAZY_MIN_SCALE = 1e-6


def _lazy_due(state: PoolState, keep: float) -> bool:
    """Whether this step can be folded into ``state.lazy`` (written whole first if due)."""
    lz = state.lazy
    if lz.steps >= LAZY_STEPS or lz.scale * keep < LAZY_MIN_SCALE:
        state.normalize()
    return keep >= LAZY_MIN_SCALE


# Folding keeps every posterior to ~1e-16 of the pool-wide numbers W, G (about
# w / lambda): fine for posteriors of that size or made mostly of positive
# terms. Far outside [0, 1], mu~ makes G large while clipped estimates add
# little, and tiny priors let a posterior sit far below W: such steps take the
# whole-array path instead.
LAZY_CAPABILITY = (-1.0, 2.0)
LAZY_MIN_PRIOR = 1e-3


def _fold_is_exact_enough(state: PoolState, w: float) -> bool:
    cap, d = state.capability, state.derived
    if d.min_prior < LAZY_MIN_PRIOR:
        return False
    implicit = w > 0.0 and not math.isnan(cap) and d.ref_count > 0
    return not implicit or LAZY_CAPABILITY[0] <= cap <= LAZY_CAPABILITY[1]


def _fold_step(state: PoolState, lam: float, w: float) -> None:
    """Forgetting plus interpolation-based implicit evidence as four numbers: O(1).

    The same step as :func:`_decay_and_interpolate`: alpha gets ``keep * alpha
    + lam * alpha0 + w (w0 + mu~ g)`` and beta ``keep * beta + lam * beta0 +
    w (r0 - mu~ g)``, both affine in the per-task constants, so only their
    coefficients change (see ``Lazy``). When mu~ is outside [0, 1] the tasks
    whose estimate clips are corrected one by one (``clip_candidates``).
    Selected tasks are overwritten by the caller afterwards.
    """
    d = state.derived
    cap = state.capability
    lz = state.lazy
    _fold_decay(lz, lam)
    if w > 0.0 and not math.isnan(cap) and d.ref_count > 0:
        lz.weak += w
        lz.gap += w * cap
        # Outside [0, 1] the interpolation clips for some tasks: the affine part
        # above gave them w (w0 + mu~ g); move them to w clip(...), O(those tasks).
        cand = d.clip_candidates(cap)
        if len(cand):
            p = d.gap[cand] * cap
            p += d.weak0[cand]
            fix = (np.clip(p, 0.0, 1.0) - p) * w
            state.stored_alpha[cand] += fix / lz.scale
            state.stored_beta[cand] -= fix / lz.scale
    lz.steps += 1
    state.changed()


def _fold_decay(lz: Lazy, lam: float) -> None:
    """Forgetting of one step, folded: every pending term times 1 - lambda, the prior's plus lambda."""
    keep = 1.0 - lam
    lz.scale *= keep
    lz.prior = keep * lz.prior + lam
    lz.weak *= keep
    lz.gap *= keep
    lz.sim *= keep


def _decay_and_interpolate(state: PoolState, lam: float, w: float) -> None:
    """Forgetting plus interpolation-based implicit evidence for every task, in place.

    The same arithmetic as :func:`_decay_and_estimate` with the default
    estimator, fused block by block so that each block's arrays are read from
    memory once, with blocks spread over the worker threads (numpy releases
    the GIL; elementwise work gives the same result whatever the split).
    Selected tasks are overwritten by the caller afterwards.
    """
    d = state.derived
    keep = 1.0 - lam
    cap = state.capability
    implicit = w > 0.0 and not math.isnan(cap) and d.ref_count > 0
    clip = implicit and not 0.0 <= cap <= 1.0
    prior = d.uniform_prior
    add_a = lam * prior[0] if prior is not None else 0.0
    add_b = lam * prior[1] if prior is not None else 0.0
    if implicit:
        add_b += w  # beta gets w (1 - p~): add w, take back w p~ below
    alpha, beta = state.alpha, state.beta

    def block(lo: int) -> None:
        hi = min(lo + BLOCK, len(alpha))
        a, b = alpha[lo:hi], beta[lo:hi]
        if lam != 0.0:
            a *= keep
            b *= keep
            if prior is None:
                a += lam * state.alpha0[lo:hi]
                b += lam * state.beta0[lo:hi]
        if implicit:
            # p~ = clip(w + mu~ (g - w)); 0 for tasks without references (weak0 = gap = 0).
            p = np.multiply(d.gap[lo:hi], cap, out=d.scratch[lo:hi])
            p += d.weak0[lo:hi]
            if clip:
                np.clip(p, 0.0, 1.0, out=p)
            p *= w
            a += p
            b -= p
        if add_a:
            a += add_a
        if add_b:
            b += add_b

    starts = range(0, len(alpha), BLOCK)
    if len(starts) > 2:
        from bots_core._select import _threads

        list(_threads().map(block, starts))
    else:
        for lo in starts:
            block(lo)
    if implicit and len(d.no_ref):
        beta[d.no_ref] -= w  # they got no implicit evidence


def _decay_and_estimate(
    state: PoolState, estimator: ImplicitEstimator, lam: float, w: float
) -> None:
    """Forgetting plus implicit evidence from any estimator plug-in (whole arrays)."""
    keep = 1.0 - lam
    if lam != 0.0:
        state.alpha *= keep
        state.beta *= keep
        state.alpha += lam * state.alpha0
        state.beta += lam * state.beta0
    est = estimator.estimate(state) if w > 0.0 else None
    if est is not None:
        p, weight = est
        # A boolean mask gives w or 0 exactly as before; float weights scale w.
        # where(): a task without weight gets nothing, even if its p~ is NaN.
        wt = np.asarray(weight, dtype=np.float64) * w
        pw = np.where(wt > 0.0, p * wt, 0.0)
        state.alpha += pw
        state.beta += wt
        state.beta -= pw


def _observe_offset(
    state: PoolState, run: RunState, evidence: Evidence, gap: FloatArray, mean: FloatArray
) -> None:
    """Adds this batch to the run's offset sums: residuals against the posterior means.

    The model is y_k = m_k + gap_k * delta_r: a run delta_r (in reference
    gaps) stronger than the pool sees every referenced task that much easier.
    Its least-squares estimate over the run's recent batches, decayed by the
    pool's momentum, is s_ge / s_gg (shrunk, see ``RunState.raw_offset``).
    """
    has = gap != 0.0
    if not has.any():
        return
    g = gap[has]
    resid = evidence.successes[has] / evidence.trials[has] - mean[has]
    keep = state.config.momentum
    run.s_ge = keep * run.s_ge + float(np.dot(g, resid))
    run.s_gg = keep * run.s_gg + float(np.dot(g, g))


def _observe_run(state: PoolState, run: RunState, mu: float | None) -> None:
    """mu_r: the same moving average as the pool's mu~, over the run's own batches (mu = mu_t)."""
    run.capability = _moving(run.capability, mu, state.config.momentum)


def _record_quality(state: PoolState, evidence: Evidence) -> None:
    """Pairs the p~ made before this step with the pass rates now observed.

    p~ is the interpolation estimate w + mu~ (g - w) with the mu~ of the
    previous steps, for the evaluated tasks that have reference rates; nothing
    is recorded while mu~ is unknown. Costs O(batch), not O(pool).
    """
    if math.isnan(state.capability) or not len(evidence.indices):
        return
    d = state.derived
    has_ref = d.has_ref[evidence.indices]
    if not has_ref.any():
        return
    idx = evidence.indices[has_ref]
    p = np.clip(d.weak0[idx] + state.capability * d.gap[idx], 0.0, 1.0)
    t = evidence.trials[has_ref]
    state.diagnostics.record_pairs(p, evidence.successes[has_ref] / t, t)


def _step_stats(evidence: Evidence, capability: float) -> StepResult:
    k = len(evidence.indices)
    if k == 0:
        return StepResult(0, math.nan, math.nan, math.nan, capability)
    s, t = evidence.successes, evidence.trials
    pos = s > 0
    below = s < t
    return StepResult(
        k,
        np.count_nonzero(pos & below) / k,
        np.count_nonzero(pos) / k,
        np.count_nonzero(below) / k,
        capability,
    )

"""Metrics of the paper (docs/algorithm.md §6): ETR, TTB, BSF, estimator quality, confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class StepRatios:
    """The three ratios of one step's evaluated tasks (docs/algorithm.md §6).

    Attributes:
        effective: Fraction with pass rate strictly between 0 and 1 (ETR).
        positive: Fraction with pass rate > 0.
        below_one: Fraction with pass rate < 1.
    """

    effective: float
    positive: float
    below_one: float


def step_ratios(successes: ArrayLike, trials: ArrayLike) -> StepRatios:
    """ETR and the two one-sided ratios of one step.

    Args:
        successes: Successes of each evaluated task.
        trials: Rollouts of each evaluated task.

    Returns:
        The ratios; NaN when no task was evaluated.
    """
    s = np.asarray(successes, dtype=np.float64)
    t = np.asarray(trials, dtype=np.float64)
    if s.size == 0:
        return StepRatios(math.nan, math.nan, math.nan)
    pos = s > 0
    below = s < t
    return StepRatios(float(np.mean(pos & below)), float(np.mean(pos)), float(np.mean(below)))


def effective_task_ratio(successes: ArrayLike, trials: ArrayLike) -> float:
    """Fraction of evaluated tasks whose pass rate is strictly between 0 and 1."""
    return step_ratios(successes, trials).effective


def average_ranks(values: ArrayLike) -> FloatArray:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    change = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    # A tie group covers ranks starts+1 .. ends; its members get their mean.
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula.

    Equals the probability that a random positive scores above a random
    negative, counting ties as one half.

    Args:
        scores: Higher means "more likely positive".
        labels: Booleans (or 0/1).

    Returns:
        The AUC in [0, 1]; NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant input."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("x and y differ in shape")
    if a.size < 2:
        return math.nan
    da = a - a.mean()
    db = b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    if denom == 0.0:
        return math.nan
    return float(da @ db) / denom


def _budget_steps(length: int, fraction: float) -> int:
    """Steps in the first ``fraction`` of a budget of ``length - 1`` steps."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    budget = length - 1
    if budget < 1:
        raise ValueError("a curve needs at least two points (before and after a step)")
    return max(1, math.ceil(round(fraction * budget, 9)))


def time_to_baseline(curve: ArrayLike, baseline: ArrayLike, fraction: float) -> float:
    """TTB(x%): steps ``curve`` needs to reach the baseline's performance at x% of the budget.

    Curves hold the performance after 0, 1, ..., T steps. The baseline's
    performance at x% is its best value within its first ceil(x T) steps; the
    result is the first step at which ``curve`` reaches it, divided by ceil(x T)
    (< 1 is better than the baseline).

    Args:
        curve: Performance of the method, length T + 1.
        baseline: Performance of the baseline (Random), length T + 1.
        fraction: x, in (0, 1].

    Returns:
        The ratio, or ``inf`` when the method never reaches the target.
    """
    c = np.asarray(curve, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if c.shape != b.shape:
        raise ValueError("curve and baseline differ in length")
    m = _budget_steps(len(b), fraction)
    target = float(np.max(b[: m + 1]))
    hit = np.flatnonzero(c >= target)
    if hit.size == 0:
        return math.inf
    return float(hit[0]) / m


def best_so_far_ratio(curve: ArrayLike, baseline: ArrayLike, fraction: float) -> float:
    """BSF(x%): best performance within the first x% of the budget, relative to the baseline.

    Args:
        curve: Performance of the method, length T + 1.
        baseline: Performance of the baseline (Random), length T + 1.
        fraction: x, in (0, 1].

    Returns:
        max(curve[0..xT]) / max(baseline[0..xT]) (> 1 is better).
    """
    c = np.asarray(curve, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if c.shape != b.shape:
        raise ValueError("curve and baseline differ in length")
    m = _budget_steps(len(b), fraction)
    return float(np.max(c[: m + 1])) / float(np.max(b[: m + 1]))


def steps_to_reach(curve: ArrayLike, target: float) -> float:
    """First step at which ``curve`` (indexed by steps done) reaches ``target``; inf if never."""
    c = np.asarray(curve, dtype=np.float64)
    hit = np.flatnonzero(c >= target)
    return float(hit[0]) if hit.size else math.inf


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion to second order; within 1e-3 of the exact value beyond 30.
    z = 1.959964
    return z + (z**3 + z) / (4.0 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96.0 * df**2)


@dataclass(frozen=True)
class Interval:
    """A mean with the half width of its 95 % confidence interval.

    Attributes:
        mean: Sample mean (NaN without finite samples).
        half_width: t-based half width (NaN with fewer than two samples).
        count: Finite samples used.
        censored: Samples that were infinite (e.g. a target never reached).
    """

    mean: float
    half_width: float
    count: int
    censored: int = 0

    @property
    def low(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        """'mean ± half' (with a note when some samples were censored)."""
        if math.isnan(self.mean):
            return "n/a" if not self.censored else f"never ({self.censored})"
        text = f"{self.mean:.{digits}f}"
        if not math.isnan(self.half_width):
            text += f" ± {self.half_width:.{digits}f}"
        if self.censored:
            text += f" ({self.censored} never)"
        return text


def mean_ci(values: ArrayLike) -> Interval:
    """Mean and 95 % t-interval of a 1-D sample.

    Infinite values (e.g. a target never reached) are left out and counted as
    censored; NaN values (undefined samples) are left out.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    censored = int(np.isinf(v).sum())
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(math.nan, math.nan, 0, censored)
    mean = float(v.mean())
    if v.size < 2:
        return Interval(mean, math.nan, 1, censored)
    half = t_quantile_975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Interval(mean, half, int(v.size), censored)


def curve_ci(curves: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Pointwise mean and 95 % half width of curves stacked on axis 0 (seeds)."""
    c = np.asarray(curves, dtype=np.float64)
    mean = c.mean(axis=0)
    if c.shape[0] < 2:
        return mean, np.zeros_like(mean)
    half = t_quantile_975(c.shape[0] - 1) * c.std(axis=0, ddof=1) / math.sqrt(c.shape[0])
    return mean, half


def rolling_mean(x: ArrayLike, window: int) -> FloatArray:
    """Trailing mean over up to ``window`` points (shorter at the start)."""
    a = np.asarray(x, dtype=np.float64)
    if window <= 1 or a.size == 0:
        return np.array(a, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(a)])
    idx = np.arange(1, a.size + 1)
    lo = np.maximum(0, idx - window)
    return np.asarray((c[idx] - c[lo]) / (idx - lo), dtype=np.float64)

"""Rolling diagnostics of a pool: pass-rate ratios of recent steps, implicit-estimator quality."""

from __future__ import annotations

import base64
import collections
import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

RATIO_WINDOW = 100
QUALITY_WINDOW = 2048


class Diagnostics:
    """What a pool remembers to judge its own health; saved with the pool.

    * ``ratios``: for each of the last ``RATIO_WINDOW`` steps that evaluated
      tasks, the share of evaluated tasks with pass rate > 0 and with pass
      rate < 1.
    * ``pairs``: for the last ``QUALITY_WINDOW`` evaluations of tasks with
      reference rates, ``(p~, r, t)``: the implicit estimate of the task's
      success probability made *before* the step (from the previous mu~), the
      pass rate then observed, and its number of trials. They measure how well
      the implicit estimator predicts what is observed later.
    """

    def __init__(self) -> None:
        self.ratios: collections.deque[tuple[float, float]] = collections.deque(maxlen=RATIO_WINDOW)
        self.pairs: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=QUALITY_WINDOW
        )

    # ------------------------------------------------------------- recording
    def record_ratios(self, positive: float, below_one: float) -> None:
        """Keeps one step's pass-rate ratios (steps that evaluated nothing are skipped)."""
        if not (math.isnan(positive) or math.isnan(below_one)):
            self.ratios.append((positive, below_one))

    def record_pairs(self, estimate: FloatArray, rate: FloatArray, trials: FloatArray) -> None:
        """Keeps (p~, observed pass rate, trials) for each evaluated task with references."""
        if not len(estimate) == len(rate) == len(trials):
            raise ValueError("estimate, rate and trials differ in length")
        self.pairs.extend(zip(estimate.tolist(), rate.tolist(), trials.tolist()))

    # ------------------------------------------------------------ statistics
    @property
    def last_positive_ratio(self) -> float:
        """Share of tasks with pass rate > 0 in the latest evaluated step (NaN before any)."""
        return self.ratios[-1][0] if self.ratios else math.nan

    @property
    def last_below_one_ratio(self) -> float:
        """Share of tasks with pass rate < 1 in the latest evaluated step (NaN before any)."""
        return self.ratios[-1][1] if self.ratios else math.nan

    @property
    def rolling_positive_ratio(self) -> float:
        """Mean share of pass rate > 0 over the last ``RATIO_WINDOW`` steps (NaN before any)."""
        return math.fsum(r[0] for r in self.ratios) / len(self.ratios) if self.ratios else math.nan

    @property
    def rolling_below_one_ratio(self) -> float:
        """Mean share of pass rate < 1 over the last ``RATIO_WINDOW`` steps (NaN before any)."""
        return math.fsum(r[1] for r in self.ratios) / len(self.ratios) if self.ratios else math.nan

    def estimator_pearson(self) -> float:
        """Pearson correlation of p~ with the observed pass rate (NaN when undefined)."""
        if len(self.pairs) < 2:
            return math.nan
        data = np.array(self.pairs, dtype=np.float64)
        return pearson(data[:, 0], data[:, 1])

    def estimator_roc_auc(self) -> float:
        """ROC AUC of p~ as a score for single rollouts passing (NaN when undefined).

        Every observed rollout is an example: a task evaluated with ``s`` of
        ``t`` passes contributes weight ``s`` as a positive and ``t - s`` as a
        negative, both scored by the task's p~. 0.5 is chance, 1 is a perfect
        ranking.
        """
        if not self.pairs:
            return math.nan
        data = np.array(self.pairs, dtype=np.float64)
        p, r, t = data[:, 0], data[:, 1], data[:, 2]
        return weighted_auc(p, r * t, (1.0 - r) * t)

    # --------------------------------------------------------- serialisation
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; floats survive exactly."""
        pairs = np.array(self.pairs, dtype="<f8").reshape(-1)
        return {
            "ratios": [list(r) for r in self.ratios],
            "pairs": base64.b64encode(pairs.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Diagnostics:
        """Inverse of :meth:`to_json`; ``None`` (older data) gives empty diagnostics."""
        out = cls()
        if not data:
            return out
        out.ratios.extend((float(a), float(b)) for a, b in data.get("ratios", []))
        raw = base64.b64decode(data.get("pairs", ""))
        flat = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if len(flat) % 3:
            raise ValueError("diagnostics pairs are truncated")
        out.pairs.extend((a, b, c) for a, b, c in flat.reshape(-1, 3).tolist())
        return out


def pearson(x: FloatArray, y: FloatArray) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant series."""
    if len(x) < 2:
        return math.nan
    dx = x - x.mean()
    dy = y - y.mean()
    # Scale each series to max |d| = 1 (correlation is scale-free): tiny deviations
    # would otherwise underflow in the products below.
    sx, sy = float(np.max(np.abs(dx))), float(np.max(np.abs(dy)))
    if sx == 0.0 or sy == 0.0 or not (math.isfinite(sx) and math.isfinite(sy)):
        return math.nan
    dx = dx / sx
    dy = dy / sy
    den = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    if den == 0.0 or not math.isfinite(den):
        return math.nan
    return max(-1.0, min(1.0, float(np.dot(dx, dy)) / den))


def weighted_auc(score: FloatArray, pos: FloatArray, neg: FloatArray) -> float:
    """P(score of a positive > score of a negative), ties counting one half.

    ``pos[i]`` and ``neg[i]`` are the positive and negative weights of the
    examples scored ``score[i]``. NaN when either class has no weight.
    """
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if total_pos <= 0.0 or total_neg <= 0.0:
        return math.nan
    values, inverse = np.unique(score, return_inverse=True)
    pos_by = np.bincount(inverse, weights=pos, minlength=len(values))
    neg_by = np.bincount(inverse, weights=neg, minlength=len(values))
    neg_below = np.cumsum(neg_by) - neg_by
    wins = float(np.dot(pos_by, neg_below + 0.5 * neg_by))
    return wins / (total_pos * total_neg)

"""Plain data exchanged between the servicer and the stores."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from bots_core import PoolConfig, PoolState, TaskSpec

# Upper bounds (``le``) of the posterior-mean histogram buckets; +Inf is implied.
POSTERIOR_MEAN_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class SelectionState(enum.Enum):
    """Where a selection stands (mirrors bots.v1.SelectionState)."""

    NONE = 0  # standalone report
    OPEN = 1
    APPLIED = 2
    DISCARDED = 3


@dataclass(frozen=True)
class PoolStats:
    """A pool's config and running statistics (bots.v1.PoolInfo)."""

    name: str
    config: PoolConfig
    task_count: int
    steps_applied: int
    open_selections: int
    last_effective_task_ratio: float
    rolling_effective_task_ratio: float
    capability: float
    tasks_with_references: int
    selections_opened: int
    selections_expired: int
    mean_posterior: float
    # Diagnostics (not on the wire; read by the metrics collector).
    positive_ratio: float = math.nan  # share of evaluated tasks with pass rate > 0, last step
    rolling_positive_ratio: float = math.nan
    below_one_ratio: float = math.nan  # share with pass rate < 1, last step
    rolling_below_one_ratio: float = math.nan
    estimator_pearson: float = math.nan  # corr(p~ before a step, pass rate observed in it)
    estimator_roc_auc: float = math.nan
    estimator_pairs: int = 0  # (p~, pass rate) pairs behind the two above
    # Tasks per POSTERIOR_MEAN_BUCKETS bucket (not cumulative): bounds[i-1] < mean <= bounds[i].
    posterior_mean_counts: tuple[int, ...] = ()
    runs: tuple[RunStats, ...] = ()  # busiest first


@dataclass(frozen=True)
class RunStats:
    """One run of a pool (bots.v1.RunInfo)."""

    run_id: str
    first_seen: float
    last_seen: float
    steps: int
    capability: float
    last_effective_task_ratio: float
    rolling_effective_task_ratio: float
    active: bool
    offset: float = 0.0


def engine_stats(state: PoolState) -> dict[str, Any]:
    """The PoolStats fields computed from the engine state (one pass over the posteriors)."""
    d = state.diagnostics
    counts: tuple[int, ...] = (0,) * len(POSTERIOR_MEAN_BUCKETS)
    mean = math.nan
    if state.task_count:
        means = state.posterior_mean()
        mean = float(np.mean(means))
        where = np.searchsorted(np.asarray(POSTERIOR_MEAN_BUCKETS), means, side="left")
        counts = tuple(
            int(c) for c in np.bincount(where, minlength=len(POSTERIOR_MEAN_BUCKETS))[: len(counts)]
        )
    return {
        "mean_posterior": mean,
        "positive_ratio": d.last_positive_ratio,
        "rolling_positive_ratio": d.rolling_positive_ratio,
        "below_one_ratio": d.last_below_one_ratio,
        "rolling_below_one_ratio": d.rolling_below_one_ratio,
        "estimator_pearson": d.estimator_pearson(),
        "estimator_roc_auc": d.estimator_roc_auc(),
        "estimator_pairs": len(d.pairs),
        "posterior_mean_counts": counts,
    }


@dataclass(frozen=True)
class SelectionView:
    """What SelectBatch answers: the selected tasks as parallel lists, best first.

    Lists rather than one object per task: this is on the hot path of every
    SelectBatch, and the servicer turns them straight into the response.
    """

    selection_id: str
    keys: list[str]
    indices: list[int]
    sampled: list[float]
    means: list[float]
    replayed: bool
    posterior_version: int
    expected_trials: float

    @classmethod
    def of(
        cls,
        selection_id: str,
        all_keys: Sequence[str],
        indices: npt.NDArray[np.int64],
        sampled: npt.NDArray[np.float64],
        means: npt.NDArray[np.float64],
        *,
        replayed: bool,
        version: int,
        expected_trials: float,
    ) -> SelectionView:
        idx = indices.tolist()
        return cls(
            selection_id, [all_keys[i] for i in idx], idx, sampled.tolist(), means.tolist(),
            replayed, version, expected_trials,
        )  # fmt: skip


@dataclass(frozen=True)
class ReportAck:
    """What ReportOutcomes answers."""

    duplicate: bool
    selection_state: SelectionState
    steps_applied: int
    posterior_version: int


@dataclass(frozen=True)
class OutcomeIn:
    """One outcome as received: key, successes, trials."""

    task_key: str
    successes: float
    trials: float


@dataclass(frozen=True)
class PoolHeaderView:
    """Pool-level part of an export."""

    name: str
    config: PoolConfig
    task_count: int
    steps_applied: int
    capability: float
    selections_opened: int


@dataclass(frozen=True)
class TaskPosteriorView:
    task: TaskSpec
    alpha: float
    beta: float


def nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x

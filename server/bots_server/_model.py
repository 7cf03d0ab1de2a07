"""Plain data exchanged between the servicer and the stores."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from bots_core import PoolConfig, TaskSpec


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


@dataclass(frozen=True)
class SelectedTaskView:
    key: str
    index: int
    sampled_p: float
    posterior_mean: float


@dataclass(frozen=True)
class SelectionView:
    """What SelectBatch answers."""

    selection_id: str
    tasks: tuple[SelectedTaskView, ...]
    replayed: bool
    posterior_version: int
    expected_trials: float


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

"""The store interface every backend implements (embedded now, Redis later)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from bots_core import PoolConfig, TaskSpec

from bots_server._model import OutcomeIn, PoolHeaderView, PoolStats, ReportAck, SelectionView

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PoolDump:
    """A consistent copy of a pool's tasks and posteriors, for export and import."""

    header: PoolHeaderView
    keys: list[str]
    weak: FloatArray
    strong: FloatArray
    prior_alpha: FloatArray
    prior_beta: FloatArray
    alpha: FloatArray
    beta: FloatArray


class Store(abc.ABC):
    """Where pools live. Every method is thread-safe and atomic.

    Errors are ``bots_server._errors.ServiceError`` or ``bots_core`` errors.
    """

    @abc.abstractmethod
    def create_pool(
        self, name: str, config: PoolConfig, tasks: Sequence[TaskSpec]
    ) -> tuple[PoolStats, bool, int]:
        """Creates a pool; returns (stats, created, tasks added)."""

    @abc.abstractmethod
    def add_tasks(self, name: str, tasks: Sequence[TaskSpec]) -> tuple[int, int]:
        """Adds tasks; returns (added, task count)."""

    @abc.abstractmethod
    def get_pool(self, name: str) -> PoolStats: ...

    @abc.abstractmethod
    def list_pools(self) -> list[PoolStats]: ...

    @abc.abstractmethod
    def delete_pool(self, name: str) -> None: ...

    @abc.abstractmethod
    def select(
        self, name: str, batch_size: int, run_id: str, step: int, expected_trials: float
    ) -> SelectionView: ...

    @abc.abstractmethod
    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
    ) -> ReportAck: ...

    @abc.abstractmethod
    def export_pool(self, name: str) -> PoolDump: ...

    @abc.abstractmethod
    def import_pool(self, dump: PoolDump) -> PoolStats: ...

    @abc.abstractmethod
    def expire_due(self) -> int:
        """Closes open selections whose wait window has passed; returns how many."""

    @abc.abstractmethod
    def healthy(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...

"""Python client of the BOTS task-selection service (bots.v1 over gRPC).

Needs only grpcio and protobuf. `SelectorClient` blocks, `AsyncSelectorClient`
runs on asyncio; both return the frozen dataclasses below and raise
`BotsError` subclasses.
"""

from __future__ import annotations

from bots_client._aio import AsyncSelectorClient
from bots_client._client import SelectorClient
from bots_client._errors import (
    AuthError,
    BotsError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from bots_client._types import (
    EstimatorKind,
    Outcome,
    PoolConfig,
    PoolHeader,
    PoolInfo,
    ReportResult,
    RunInfo,
    SelectedTask,
    Selection,
    SelectionMode,
    SelectionState,
    Task,
    TaskPosterior,
)

__all__ = [
    "AsyncSelectorClient",
    "AuthError",
    "BotsError",
    "ConflictError",
    "EstimatorKind",
    "InvalidRequestError",
    "NotFoundError",
    "Outcome",
    "OverloadedError",
    "PoolConfig",
    "PoolHeader",
    "PoolInfo",
    "ReportResult",
    "RunInfo",
    "SelectedTask",
    "Selection",
    "SelectionMode",
    "SelectionState",
    "SelectorClient",
    "Task",
    "TaskPosterior",
    "UnavailableError",
]

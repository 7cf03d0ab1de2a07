"""Domain errors of the server and their one mapping to gRPC status codes.

ServiceError
├── InvalidArgument     malformed request, whatever the state
├── NotFound            unknown pool, task or selection
├── AlreadyExists       reused id with another payload, pool with another config
├── FailedPrecondition  not allowed in the current state (e.g. selection closed)
├── ResourceExhausted   a configured limit
├── StoreUnavailable    the store cannot be reached or written
└── DataLoss            the store lost a pool (e.g. Redis restarted empty)
"""

from __future__ import annotations

import grpc
from bots_core import (
    BotsCoreError,
    CorruptStateError,
    InvalidInputError,
    TaskConflictError,
    UnknownTaskError,
    shorten,
)


class ServiceError(Exception):
    """Base of the errors a request can end with; carries its status code."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StoreUnavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    code = grpc.StatusCode.DATA_LOSS


_CORE_CODES: list[tuple[type[BotsCoreError], grpc.StatusCode]] = [
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownTaskError, grpc.StatusCode.NOT_FOUND),
    (TaskConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (CorruptStateError, grpc.StatusCode.FAILED_PRECONDITION),
]


short = shorten  # errors echo at most a short prefix of what the caller sent


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status and caller-facing message for a known error; None for unexpected ones."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    for cls, code in _CORE_CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    return None

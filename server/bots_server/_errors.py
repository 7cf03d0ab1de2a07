"""Domain errors of the server and their one mapping to gRPC status codes.

ServiceError
├── InvalidArgument     malformed request, whatever the state
├── NotFound            unknown pool, task or selection
├── AlreadyExists       reused id with another payload, pool with another config
├── FailedPrecondition  not allowed in the current state (e.g. selection closed)
├── ResourceExhausted   a configured limit
├── StoreUnavailable    the store cannot be reached or written
└── DataLoss            the store lost a pool (e.g. Redis restarted empty)

Messages echo at most a short prefix of what the caller sent: builders pass
caller values through :func:`short`, and :func:`status_for` caps the whole
message (:func:`cap_message`) as a safety net, because gRPC drops a status
whose details exceed its metadata limit (about 8 KiB) and the caller then sees
an unrelated RESOURCE_EXHAUSTED instead of the real error.
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

short = shorten
"""A caller value as error messages may echo it (quoted, at most 64 characters):
one helper for the engine's messages and the server's."""
MAX_MESSAGE_BYTES = 1024
"""UTF-8 bytes of a status message, at most. gRPC percent-encodes non-ASCII
bytes (x3), so even then the details stay far below its ~8 KiB header limit."""


def cap_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes (marked ``…(truncated)``)."""
    raw = message.encode("utf-8")
    if len(raw) <= limit:
        return message
    marker = "…(truncated)"
    keep = limit - len(marker.encode("utf-8"))
    # errors="ignore" drops a multi-byte character split by the cut.
    return raw[:keep].decode("utf-8", errors="ignore") + marker


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


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status and caller-facing message for a known error; None for unexpected ones.

    The message is capped with :func:`cap_message`, whoever built it.
    """
    if isinstance(exc, ServiceError):
        return exc.code, cap_message(str(exc))
    for cls, code in _CORE_CODES:
        if isinstance(exc, cls):
            return code, cap_message(str(exc))
    return None

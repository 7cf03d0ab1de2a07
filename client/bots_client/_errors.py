"""Errors raised by the client: one base class, one subclass per group of gRPC codes.

    BotsError                  any failed call (code not in a group below)
    ├── InvalidRequestError    INVALID_ARGUMENT, OUT_OF_RANGE
    ├── NotFoundError          NOT_FOUND
    ├── ConflictError          ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED
    ├── AuthError              UNAUTHENTICATED, PERMISSION_DENIED
    ├── OverloadedError        RESOURCE_EXHAUSTED
    └── UnavailableError       UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED

Every error carries the gRPC status ``code`` (None when the error did not come
from a call) and the server's ``details`` text.

Arguments the client can check itself (a negative batch size, a zero
timeout, a chunk size below 1, a config value that is not a number...) raise
`InvalidRequestError` with ``code`` None before any call is made. It is also
a ``ValueError``, so code written against plain ``ValueError`` keeps working.
Arguments of the wrong Python type still raise ``TypeError``.
"""

from __future__ import annotations

import grpc


class BotsError(Exception):
    """Base of every error the BOTS client raises.

    Attributes:
        code: The gRPC status code of the failed call, or None.
        details: The server's (or gRPC's) explanation.
    """

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{details} ({code.name})" if code is not None else details)


class InvalidRequestError(BotsError, ValueError):
    """The request is malformed whatever the server's state (INVALID_ARGUMENT, OUT_OF_RANGE).

    Also raised, with ``code`` None, for arguments refused by the client before
    any call is made.
    """


class NotFoundError(BotsError):
    """An unknown pool, task or selection (NOT_FOUND)."""


class ConflictError(BotsError):
    """The request conflicts with the server's state.

    A pool that exists with another config, a request id reused with another
    payload (ALREADY_EXISTS), or an operation not allowed in the current state
    (FAILED_PRECONDITION, ABORTED).
    """


class AuthError(BotsError):
    """Missing or rejected credentials (UNAUTHENTICATED, PERMISSION_DENIED)."""


class OverloadedError(BotsError):
    """A server limit was hit (RESOURCE_EXHAUSTED)."""


class UnavailableError(BotsError):
    """The server could not be reached or did not answer in time.

    Covers UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED; the client has
    already retried what it safely could when this is raised.
    """


_GROUPS: dict[grpc.StatusCode, type[BotsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
    grpc.StatusCode.CANCELLED: UnavailableError,
}


def error_for_code(code: grpc.StatusCode | None, details: str) -> BotsError:
    """The error instance of the class that groups ``code``.

    Args:
        code: A gRPC status code, or None.
        details: The message to carry.

    Returns:
        An instance of the matching `BotsError` subclass (`BotsError` itself
        for codes outside every group).
    """
    cls = _GROUPS.get(code, BotsError) if code is not None else BotsError
    return cls(details, code)


def error_from_rpc(err: grpc.RpcError) -> BotsError:
    """Turns a failed gRPC call (sync or asyncio) into the matching `BotsError`.

    Args:
        err: The exception gRPC raised.

    Returns:
        The `BotsError` subclass instance for the call's status code.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = None
    if not isinstance(details, str) or not details:
        details = str(err) or "RPC failed"
    return error_for_code(code, details)

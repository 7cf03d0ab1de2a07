"""Bearer-token auth: the token file, roles per method, and the server interceptor.

Tokens come from ``auth_tokens_file`` (one ``<token> <role>`` per line, role
``read`` or ``write``; ``#`` starts a comment) and from ``auth_token`` (one
write token, usually given as ``BOTS_AUTH_TOKEN``). The file is re-read when
it changes, so tokens rotate without a restart. Only SHA-256 digests of the
tokens are kept in memory, and no token is ever logged.

``read`` tokens may call SelectBatch, GetPool, ListPools, ExportPosteriors
(and reflection); ``write`` tokens may call everything. Health checks need no
token, so that probes and ``bots check`` keep working.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from bots_server._metrics import split_method, wrap_behaviors

log = logging.getLogger(__name__)

READ = "read"
WRITE = "write"
ROLES = (READ, WRITE)
MIN_TOKEN_LENGTH = 16
SELECTOR_SERVICE = "bots.v1.TaskSelector"
READ_METHODS = frozenset({"SelectBatch", "GetPool", "ListPools", "ExportPosteriors"})
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
RELOAD_CHECK_SECONDS = 1.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, source: str) -> dict[bytes, str]:
    """Digest -> role for the ``<token> <role>`` lines of ``text``.

    Raises:
        ValueError: a malformed line; the message names the line, never the token.
    """
    table: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ROLES:
            raise ValueError(
                f"{source}:{number}: expected '<token> <role>' with role one of {', '.join(ROLES)}"
            )
        token, role = fields
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"{source}:{number}: tokens must be at least {MIN_TOKEN_LENGTH} characters"
            )
        table[_digest(token)] = role
    return table


class TokenTable:
    """The accepted tokens and their roles; re-reads ``path`` when the file changes."""

    def __init__(self, path: str = "", env_token: str = "") -> None:
        self.path = path
        self._fixed: dict[bytes, str] = {}
        if env_token:
            if len(env_token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in env_token):
                raise ValueError(
                    f"auth_token must be at least {MIN_TOKEN_LENGTH} characters without spaces"
                )
            self._fixed[_digest(env_token)] = WRITE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._table: dict[bytes, str] = {}
        if path:
            self._load()  # errors here stop the server from starting
        if not self._table and not self._fixed:
            raise ValueError(f"auth is on but {path or 'auth_token'} holds no token")

    def _load(self) -> None:
        st = os.stat(self.path)
        with open(self.path, encoding="utf-8") as f:
            table = parse_tokens(f.read(), self.path)
        self._table = table
        self._stamp = (st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if not self.path or now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return
            self._checked = now
            try:
                st = os.stat(self.path)
                if (st.st_mtime_ns, st.st_size) == self._stamp:
                    return
                self._load()
                log.info("reloaded %d tokens from %s", len(self._table), self.path)
            except (OSError, ValueError) as exc:
                log.error("keeping the previous tokens: cannot reload %s: %s", self.path, exc)

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, or None when it is not accepted."""
        self._maybe_reload()
        d = _digest(token)
        return self._fixed.get(d) or self._table.get(d)


def required_role(full_method: str) -> str | None:
    """The role a method needs; None for methods open to everyone (health)."""
    service, method = split_method(full_method)
    if service in OPEN_SERVICES:
        return None
    if service == SELECTOR_SERVICE:
        return READ if method in READ_METHODS else WRITE
    return READ  # reflection


def bearer_token(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token (UNAUTHENTICATED) or with too small a role
    (PERMISSION_DENIED)."""

    def __init__(self, tokens: TokenTable, on_failure: Callable[[str], None] | None = None) -> None:
        self.tokens = tokens
        self.on_failure = on_failure

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        need = required_role(method)
        if need is None:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return self._deny(
                handler, "missing", grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token: send 'authorization: Bearer <token>' metadata",
            )  # fmt: skip
        role = self.tokens.role_of(token)
        if role is None:
            return self._deny(handler, "invalid", grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        if need == WRITE and role != WRITE:
            name = split_method(method)[1]
            return self._deny(
                handler, "forbidden", grpc.StatusCode.PERMISSION_DENIED,
                f"this token is read-only; {name} needs a write token",
            )  # fmt: skip
        return handler

    def _deny(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        reason: str,
        code: grpc.StatusCode,
        message: str,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        on_failure = self.on_failure

        def refuse(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def denied(request: Any, context: grpc.ServicerContext) -> Any:
                if on_failure is not None:
                    on_failure(reason)
                log.warning("refused a call from %s: %s", context.peer(), message)
                context.abort(code, message)

            return denied

        return wrap_behaviors(handler, refuse, refuse)


def tokens_from_settings(path: str, env_token: str) -> TokenTable | None:
    """The token table, or None when auth is off (no file and no token)."""
    if not path and not env_token:
        return None
    try:
        return TokenTable(path, env_token)
    except OSError as exc:
        raise RuntimeError(f"cannot read auth_tokens_file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None

"""Bearer-token auth: the token file, roles per method, and the server interceptor.

Tokens come from ``auth_tokens_file`` (one ``<token> <role>`` per line, role
``read`` or ``write``; ``#`` starts a comment) and from ``auth_token`` (one
write token, usually given as ``BOTS_AUTH_TOKEN``). The file is re-read when
it changes, so tokens rotate without a restart. Only SHA-256 digests of the
tokens are kept in memory, and no token is ever logged.

The file fails closed: when it disappears, its tokens stop working at once
(every call that needs one is refused with UNAUTHENTICATED, and an ERROR names
the file) until it is back. A file that cannot be parsed keeps the previous
tokens, with an ERROR, so that a botched edit does not lock everyone out.

Refused calls are logged as warnings at most once per peer address and
reason per interval, with the count of those suppressed, so that a client
hammering the server without a token cannot flood the log.

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
from collections import OrderedDict
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
        self._bad_stamp: tuple[int, int] | None = None  # a file version that failed to load
        self._missing = False
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
            except FileNotFoundError:
                # Deleting the file must revoke its tokens, never keep them alive.
                if not self._missing:
                    log.error(
                        "token file %s is gone: its tokens are revoked and calls that "
                        "need them are refused (UNAUTHENTICATED) until the file is back",
                        self.path,
                    )
                self._missing = True
                self._table = {}
                self._stamp = None
                return
            except OSError as exc:
                self._failed(None, exc)
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp in (self._stamp, self._bad_stamp):
                return
            try:
                self._load()
            except (OSError, ValueError) as exc:
                self._failed(stamp, exc)
                return
            self._missing = False
            self._bad_stamp = None
            log.info("reloaded %d tokens from %s", len(self._table), self.path)

    def _failed(self, stamp: tuple[int, int] | None, exc: Exception) -> None:
        """Logs an unusable token file once per version of it; the old tokens stay."""
        if stamp is not None and stamp == self._bad_stamp:
            return
        self._bad_stamp = stamp
        kept = "no tokens" if self._missing else "the previous tokens"
        log.error("keeping %s: cannot reload %s: %s", kept, self.path, exc)

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


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.1:5555`` -> ``ipv4:10.0.0.1``: the peer without its (ephemeral) port."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer


class RefusalLog:
    """Warnings for refused calls, at most one per (peer address, reason) per interval.

    The next warning of a (peer address, reason) says how many refusals were
    suppressed since the previous one. At most ``max_peers`` pairs are
    remembered; the least recently warned about are forgotten first.

    Args:
        interval: Seconds between two warnings of one pair; 0 logs every refusal.
        clock: Monotonic clock (tests may pass their own).
        max_peers: Pairs remembered.
    """

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = 4096,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._max = max_peers
        self._lock = threading.Lock()
        # (peer address, reason) -> [time of the last warning, refusals suppressed since]
        self._last: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def refused(self, peer: str, reason: str, message: str) -> None:
        """Records a refusal and logs it unless one like it was logged recently."""
        suppressed = 0
        if self.interval > 0:
            key = (peer_address(peer), reason)
            now = self._clock()
            with self._lock:
                entry = self._last.get(key)
                if entry is not None and now - entry[0] < self.interval:
                    entry[1] += 1
                    return
                suppressed = int(entry[1]) if entry is not None else 0
                self._last[key] = [now, 0]
                self._last.move_to_end(key)
                while len(self._last) > self._max:
                    self._last.popitem(last=False)
        more = (
            f" ({suppressed} similar refusals from this address in the last "
            f"{self.interval:g}s were not logged)"
            if suppressed
            else ""
        )
        log.warning("refused a call from %s: %s%s", peer, message, more)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token (UNAUTHENTICATED) or with too small a role
    (PERMISSION_DENIED).

    Args:
        tokens: The accepted tokens.
        on_failure: Called with the reason ("missing", "invalid", "forbidden")
            of every refusal (metrics).
        log_interval: Seconds between two warnings about refusals of one
            peer address and reason (see `RefusalLog`).
    """

    def __init__(
        self,
        tokens: TokenTable,
        on_failure: Callable[[str], None] | None = None,
        *,
        log_interval: float = 60.0,
    ) -> None:
        self.tokens = tokens
        self.on_failure = on_failure
        self.refusals = RefusalLog(log_interval)

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
        refusals = self.refusals

        def refuse(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def denied(request: Any, context: grpc.ServicerContext) -> Any:
                if on_failure is not None:
                    on_failure(reason)
                refusals.refused(context.peer(), reason, message)
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

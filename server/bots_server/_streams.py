"""Keeps streaming RPCs from starving the server: a slot per stream, idle streams cancelled.

The sync gRPC server holds one worker thread for the whole life of a
streaming call. A client that opens an import and stops sending, or opens an
export and never reads it, would keep that thread forever, and enough of them
take every thread (health checks included). :class:`StreamGuard` prevents it:

* every streaming call (request stream, response stream or both, whatever
  the service) takes one of ``max_streams`` slots; a call that finds none
  free is refused at once with RESOURCE_EXHAUSTED. The server's thread pool
  has ``max_streams`` threads on top of those for unary calls, so streams
  can never take the threads unary calls and health checks need;
* a call that waits on its peer (for the next request message, or for the
  last response message to be taken) longer than ``idle_seconds`` is
  cancelled, which frees its thread and its slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from bots_server._errors import ServiceError

log = logging.getLogger(__name__)


class StreamIdle(ServiceError):
    """The stream was cancelled because its peer went quiet (the peer sees CANCELLED)."""

    code = grpc.StatusCode.CANCELLED


class _Stream:
    """One streaming call in progress, as the watchdog sees it."""

    __slots__ = ("cancelled", "context", "method", "waiting_since")

    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        self.method = method
        self.context = context
        # Monotonic time since which the server has been waiting on the peer;
        # None while the server itself is working (those pauses are not idle).
        self.waiting_since: float | None = None
        self.cancelled = False


class StreamGuard:
    """Slots and idle timeouts for streaming calls; install :meth:`interceptor` last.

    Args:
        max_streams: Streaming calls served at once (>= 1).
        idle_seconds: Peer silence after which a stream is cancelled; 0 = never.

    Raises:
        ValueError: ``max_streams`` < 1 or ``idle_seconds`` < 0.
    """

    def __init__(self, max_streams: int, idle_seconds: float) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if not idle_seconds >= 0:
            raise ValueError(f"stream_idle_seconds must be >= 0, got {idle_seconds}")
        self.max_streams = max_streams
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def in_use(self) -> int:
        """Slots taken by streaming calls now."""
        with self._lock:
            return len(self._streams)

    def start(self) -> None:
        """Starts the watchdog thread (none when idle streams are never cancelled)."""
        if self.idle_seconds > 0 and self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="bots-stream-watch", daemon=True
            )
            self._watcher.start()

    def close(self) -> None:
        """Stops the watchdog thread."""
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def interceptor(self) -> grpc.ServerInterceptor:
        """A server interceptor applying the guard to every streaming method."""
        return _GuardInterceptor(self)

    # --- slots --------------------------------------------------------------------

    def _enter(self, method: str, context: grpc.ServicerContext) -> _Stream:
        stream = _Stream(method, context)
        with self._lock:
            full = len(self._streams) >= self.max_streams
            if not full:
                self._streams.add(stream)
        if full:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many streaming calls in progress (the server's limit is "
                f"{self.max_streams}); retry later",
            )
        # Released when the call ends, whichever way: the behavior of a response
        # stream returns long before its last message is sent.
        if not context.add_callback(lambda: self._leave(stream)):
            self._leave(stream)
        return stream

    def _leave(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    # --- watchdog -------------------------------------------------------------------

    def _watch(self) -> None:
        period = min(1.0, self.idle_seconds / 4)
        while not self._stopped.wait(period):
            now = time.monotonic()
            with self._lock:
                idle = [
                    s
                    for s in self._streams
                    if not s.cancelled
                    and s.waiting_since is not None
                    and now - s.waiting_since > self.idle_seconds
                ]
                for s in idle:
                    s.cancelled = True
            for s in idle:
                log.info(
                    "cancelled %s from %s: its peer was idle for more than %.1fs",
                    s.method,
                    s.context.peer(),
                    self.idle_seconds,
                )
                s.context.cancel()

    # --- wrappers -------------------------------------------------------------------

    def wrap(
        self, method: str, behavior: Callable[..., Any], *, requests: bool, responses: bool
    ) -> Callable[..., Any]:
        """``behavior`` of a streaming method, run inside a slot and watched for idleness."""

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            stream = self._enter(method, context)
            if requests:
                request = _requests(stream, request)
            result = behavior(request, context)
            if responses:
                return _responses(stream, result)
            return result

        return guarded


def _requests(stream: _Stream, iterator: Iterator[Any]) -> Iterator[Any]:
    """The request stream, marking the waits for the next message as idle time."""
    while True:
        stream.waiting_since = time.monotonic()
        try:
            item = next(iterator)
        except StopIteration:
            # A cancel ends gRPC's request iterator like a normal end of stream;
            # the handler must not take a cut-off stream for a complete one.
            if stream.cancelled:
                raise StreamIdle("the stream was idle too long and was cancelled") from None
            return
        finally:
            stream.waiting_since = None
        yield item


def _responses(stream: _Stream, iterator: Iterator[Any]) -> Iterator[Any]:
    """The response stream, marking the time a sent message waits to be taken as idle."""
    for item in iterator:
        # gRPC asks for the next item only once this one has been handed to the
        # transport, so from here to the next iteration the peer is the one to act.
        stream.waiting_since = time.monotonic()
        yield item
        stream.waiting_since = None


class _GuardInterceptor(grpc.ServerInterceptor):
    def __init__(self, guard: StreamGuard) -> None:
        self.guard = guard

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler  # type: ignore[no-any-return]
        method = handler_call_details.method
        wrap = self.guard.wrap
        if handler.stream_unary is not None:
            fn = wrap(method, handler.stream_unary, requests=True, responses=False)
            return handler._replace(stream_unary=fn)  # type: ignore[no-any-return]
        if handler.unary_stream is not None:
            fn = wrap(method, handler.unary_stream, requests=False, responses=True)
            return handler._replace(unary_stream=fn)  # type: ignore[no-any-return]
        fn = wrap(method, handler.stream_stream, requests=True, responses=True)
        return handler._replace(stream_stream=fn)  # type: ignore[no-any-return]

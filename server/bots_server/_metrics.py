"""Prometheus metrics: the registry, the RPC interceptor, the instrumented store, /metrics.

Every server owns a fresh ``CollectorRegistry`` (so several servers can run
in one process, as the tests do). Names follow the Prometheus conventions:
base units (seconds), ``_total`` on counters, explicit histogram buckets.
Label values come from closed sets (RPC methods registered on the server,
status codes, store operations) or, for the per-pool metrics of
``_metrics_pools.py``, from at most ``metrics_max_pools`` pool names.
docs/operations.md lists every metric.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from bots_core import BotsCoreError, PoolConfig, TaskSpec
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from bots_server._errors import AlreadyExists, DataLoss, ServiceError, StoreUnavailable
from bots_server._metrics_pools import PoolCollector
from bots_server._model import OutcomeIn, PoolStats, ReportAck, SelectionView
from bots_server._store import F32Array, PoolDump, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds. gRPC calls served from memory take well under a millisecond;
# Redis round trips a few; exports and imports of large pools seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def _version() -> str:
    try:
        return metadata.version("bots-selector")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class ServerMetrics:
    """All metrics of one server, in their own registry."""

    def __init__(
        self,
        store: Store,
        *,
        max_pools: int = 50,
        max_concurrent_rpcs: int = 0,
        store_kind: str = "",
        registry: CollectorRegistry | None = None,
    ) -> None:
        # `_created` samples would double the series count for little use.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        info = Gauge(
            "bots_build_info",
            "Always 1; labels tell the version and the kind of store.",
            ["version", "store"],
            registry=r,
        )
        info.labels(_version(), store_kind or type(store).__name__).set(1)

        rpc_labels = ["service", "method"]
        self.rpc_started = Counter(
            "bots_rpc_started", "RPCs received, by method.", rpc_labels, registry=r
        )
        self.rpc_handled = Counter(
            "bots_rpc_handled",
            "RPCs completed, by method and gRPC status code.",
            [*rpc_labels, "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "bots_rpc_duration_seconds",
            "Time from receiving an RPC to its status, by method and status code.",
            [*rpc_labels, "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_in_flight = Gauge("bots_rpc_in_flight", "RPCs being served right now.", registry=r)

        Gauge(
            "bots_rpc_in_flight_limit",
            "The max_concurrent_rpcs setting (0 = no limit). Calls beyond it get "
            "RESOURCE_EXHAUSTED before they reach the RPC metrics.",
            registry=r,
        ).set(max_concurrent_rpcs)

        self.selections = Counter(
            "bots_selections", "Selections drawn by this replica (replays excluded).", registry=r
        )
        self.selection_replays = Counter(
            "bots_selection_replays",
            "SelectBatch calls answered with an existing selection (same run id and step).",
            registry=r,
        )
        self.selected_tasks = Counter(
            "bots_selected_tasks", "Tasks in the selections drawn by this replica.", registry=r
        )
        self.reports = Counter(
            "bots_reports",
            "ReportOutcomes calls by result: accepted, duplicate (a retry, answered from "
            "memory) or conflict (request id reused with another payload).",
            ["result"],
            registry=r,
        )
        for result in ("accepted", "duplicate", "conflict"):
            self.reports.labels(result)
        self.reported_outcomes = Counter(
            "bots_reported_outcomes", "Outcome rows in accepted reports.", registry=r
        )
        self.reported_trials = Counter(
            "bots_reported_trials", "Trials (rollouts) in accepted reports.", registry=r
        )
        self.selections_expired = Counter(
            "bots_selections_expired",
            "Open selections this replica closed because their wait window passed.",
            registry=r,
        )

        self.store_duration = Histogram(
            "bots_store_operation_duration_seconds",
            "Time spent in the store, by operation (errors included).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "bots_store_errors",
            "Store operations that failed for a store reason, by operation and kind "
            "(unavailable, data_loss, internal); request errors are not counted.",
            ["operation", "kind"],
            registry=r,
        )
        self.auth_failures = Counter(
            "bots_auth_failures",
            "RPCs refused by token auth, by reason (missing, invalid, forbidden).",
            ["reason"],
            registry=r,
        )
        self.pools = PoolCollector(store, max_pools=max_pools, registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def interceptor(self) -> grpc.ServerInterceptor:
        """The server interceptor that counts and times every RPC."""
        return _MetricsInterceptor(self)


# --------------------------------------------------------------------- RPCs


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def wrap_behaviors(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    streaming: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with its behavior wrapped: ``unary`` for calls that answer once,
    ``streaming`` for calls that answer with a stream."""
    h: Any = handler
    if h.unary_unary is not None:
        return h._replace(unary_unary=unary(h.unary_unary))  # type: ignore[no-any-return]
    if h.stream_unary is not None:
        return h._replace(stream_unary=unary(h.stream_unary))  # type: ignore[no-any-return]
    if h.unary_stream is not None:
        return h._replace(unary_stream=streaming(h.unary_stream))  # type: ignore[no-any-return]
    if h.stream_stream is not None:
        return h._replace(stream_stream=streaming(h.stream_stream))  # type: ignore[no-any-return]
    return handler


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    ctx: Any = context  # grpc's stubs lack code(); it is set by abort() or set_code()
    code = ctx.code()  # None for a plain success
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return str(code.name)


class _MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED, label sets stay closed
            return None
        service, method = split_method(handler_call_details.method)
        m = self.m

        def finish(start: float, code: str) -> None:
            m.rpc_in_flight.dec()
            m.rpc_handled.labels(service, method, code).inc()
            m.rpc_duration.labels(service, method, code).observe(time.perf_counter() - start)

        def begin() -> float:
            m.rpc_started.labels(service, method).inc()
            m.rpc_in_flight.inc()
            return time.perf_counter()

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                start = begin()
                failed = True
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    finish(start, _code_name(context, failed))

            return wrapped

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = begin()
                code = None
                try:
                    yield from behavior(request, context)
                    code = _code_name(context, failed=False)
                except GeneratorExit:  # the client went away mid-stream
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_name(context, failed=True)
                    raise
                finally:
                    finish(start, code or "UNKNOWN")

            return wrapped

        return wrap_behaviors(handler, unary, streaming)


# -------------------------------------------------------------------- store


class InstrumentedStore(Store):
    """A Store that times every operation and counts selections and reports."""

    def __init__(self, inner: Store, metrics: ServerMetrics) -> None:
        self.inner = inner
        self.m = metrics

    def _timed(self, op: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        except StoreUnavailable:
            self.m.store_errors.labels(op, "unavailable").inc()
            raise
        except DataLoss:
            self.m.store_errors.labels(op, "data_loss").inc()
            raise
        except (ServiceError, BotsCoreError):
            raise  # the request's fault, not the store's
        except Exception:
            self.m.store_errors.labels(op, "internal").inc()
            raise
        finally:
            self.m.store_duration.labels(op).observe(time.perf_counter() - start)

    def create_pool(
        self,
        name: str,
        config: PoolConfig,
        tasks: Sequence[TaskSpec],
        embeddings: F32Array | None = None,
    ) -> tuple[PoolStats, bool, int]:
        return self._timed(
            "create_pool", lambda: self.inner.create_pool(name, config, tasks, embeddings)
        )

    def add_tasks(
        self, name: str, tasks: Sequence[TaskSpec], embeddings: F32Array | None = None
    ) -> tuple[int, int]:
        return self._timed("add_tasks", lambda: self.inner.add_tasks(name, tasks, embeddings))

    def get_pool(self, name: str) -> PoolStats:
        return self._timed("get_pool", lambda: self.inner.get_pool(name))

    def list_pools(self) -> list[PoolStats]:
        return self._timed("list_pools", self.inner.list_pools)

    def delete_pool(self, name: str) -> None:
        self._timed("delete_pool", lambda: self.inner.delete_pool(name))

    def select(
        self,
        name: str,
        batch_size: int,
        run_id: str,
        step: int,
        expected_trials: float,
        wait_seconds: float = 0.0,
    ) -> SelectionView:
        view = self._timed(
            "select",
            lambda: self.inner.select(
                name, batch_size, run_id, step, expected_trials, wait_seconds
            ),
        )
        if view.replayed:
            self.m.selection_replays.inc()
        else:
            self.m.selections.inc()
            self.m.selected_tasks.inc(len(view.keys))
        return view

    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
        run_id: str = "",
    ) -> ReportAck:
        try:
            ack = self._timed(
                "report",
                lambda: self.inner.report(name, request_id, selection_id, outcomes, final, run_id),
            )
        except AlreadyExists:
            self.m.reports.labels("conflict").inc()
            raise
        if ack.duplicate:
            self.m.reports.labels("duplicate").inc()
        else:
            self.m.reports.labels("accepted").inc()
            self.m.reported_outcomes.inc(len(outcomes))
            self.m.reported_trials.inc(sum(o.trials for o in outcomes))
        return ack

    def export_pool(self, name: str) -> PoolDump:
        return self._timed("export_pool", lambda: self.inner.export_pool(name))

    def import_pool(self, dump: PoolDump) -> PoolStats:
        return self._timed("import_pool", lambda: self.inner.import_pool(dump))

    def expire_due(self) -> int:
        closed = self._timed("expire_due", self.inner.expire_due)
        self.m.selections_expired.inc(closed)
        return closed

    def healthy(self) -> bool:
        ok = self._timed("healthy", self.inner.healthy)
        if not ok:
            self.m.store_errors.labels("healthy", "unavailable").inc()
        return ok

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------ /metrics


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class MetricsHttpServer:
    """The /metrics endpoint on its own port, served by a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._httpd = make_server(
            host.strip("[]"), port, make_wsgi_app(registry), Server, handler_class=_QuietHandler
        )
        self.port = int(self._httpd.server_address[1])
        # A short poll interval keeps stop() fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
            name="bots-metrics", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

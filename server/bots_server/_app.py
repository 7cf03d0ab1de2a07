"""Assembles and runs the gRPC server: servicer, health, reflection, expiry, shutdown,
metrics, TLS and token auth."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc
from bots_api.v1 import selector_pb2, selector_pb2_grpc
from bots_core import warm_up_kernel
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bots_server._auth import AuthInterceptor, tokens_from_settings
from bots_server._embedded import EmbeddedStore
from bots_server._memory import return_large_blocks
from bots_server._metrics import InstrumentedStore, MetricsHttpServer, ServerMetrics
from bots_server._pool import Retention
from bots_server._servicer import TaskSelectorServicer
from bots_server._settings import ServerSettings, redact_url
from bots_server._store import Store
from bots_server._streams import StreamGuard
from bots_server._tls import server_credentials

log = logging.getLogger("bots_server")

SERVICE_NAME = selector_pb2.DESCRIPTOR.services_by_name["TaskSelector"].full_name
# Health service name that stays SERVING while the process runs, whatever the
# store's state: for liveness probes (readiness uses "" or SERVICE_NAME).
LIVENESS_SERVICE = "liveness"
# Streams the plaintext health port serves at once (health Watch only).
HEALTH_PORT_STREAMS = 2


def build_store(settings: ServerSettings) -> Store:
    """The Redis store when ``redis_url`` is set, else the embedded store."""
    retention = Retention(
        closed_selections=settings.selections_remembered,
        selection_seconds=settings.selection_retention_seconds,
        request_ids=settings.request_ids_remembered,
        request_seconds=settings.dedup_ttl_seconds,
        max_open_selections=settings.max_open_selections,
    )
    if settings.redis_url:
        from bots_server._redis_store import RedisStore

        return RedisStore(
            settings.redis_url,
            cluster=settings.redis_cluster,
            timeout=settings.redis_timeout_seconds,
            checkpoint_every=settings.checkpoint_every,
            retention=retention,
            max_tasks_per_pool=settings.max_tasks_per_pool,
        )
    return EmbeddedStore(
        settings.data_dir,
        fsync=settings.fsync,
        snapshot_every=settings.snapshot_every,
        max_tasks_per_pool=settings.max_tasks_per_pool,
        retention=retention,
    )


class RunningServer:
    """A started server; stop it with :meth:`stop`."""

    def __init__(
        self,
        server: grpc.Server,
        store: Store,
        health_servicer: health.HealthServicer,
        port: int,
        settings: ServerSettings,
        *,
        metrics: ServerMetrics | None = None,
        metrics_http: MetricsHttpServer | None = None,
        health_server: grpc.Server | None = None,
        served_store: Store | None = None,
        guards: tuple[StreamGuard, ...] = (),
    ) -> None:
        self.server = server
        self.store = store
        self.metrics = metrics
        self.metrics_port: int | None = metrics_http.port if metrics_http is not None else None
        self.health_port: int | None = None
        self._metrics_http = metrics_http
        self._health_server = health_server
        # The store as the servicer sees it (instrumented when metrics are on).
        self._served_store = served_store if served_store is not None else store
        self.health = health_servicer
        self.guards = guards
        self.port = port
        self.settings = settings
        self.address = (
            f"{settings.host}:{port}" if ":" not in settings.host else f"[{settings.host}]:{port}"
        )
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="bots-watch", daemon=True)
        self._watcher.start()

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _watch(self) -> None:
        """Closes expired selections and keeps health in line with the store."""
        interval = self.settings.expiry_interval_seconds
        serving: bool | None = None
        while not self._stopped.wait(interval):
            try:
                ok = self._served_store.healthy()
                if ok:
                    self._served_store.expire_due()
            except Exception:
                log.exception("background check failed")
                ok = False
            if ok != serving and not self._stopped.is_set():
                self._set_serving(ok)
                serving = ok

    def stop(self, grace: float | None = None) -> None:
        """Marks the server unhealthy, drains RPCs for ``grace`` seconds, closes the store."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        grace = self.settings.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        if self._metrics_http is not None:
            self._metrics_http.close()
        self._watcher.join(timeout=5)
        for guard in self.guards:
            guard.close()
        self.store.close()
        log.info("server stopped")

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        self.server.wait_for_termination()


def start_server(settings: ServerSettings, store: Store | None = None) -> RunningServer:
    """Builds the store (unless given), binds the ports and starts serving.

    Raises:
        RuntimeError: a port cannot be bound, or the TLS or token settings are
            unusable (checked before the store is opened).
    """
    return_large_blocks()  # freed load buffers leave the resident set (bots_server._memory)
    warm_up_kernel()  # the compiled draw loads while the rest starts
    creds = server_credentials(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )
    tokens = tokens_from_settings(settings.auth_tokens_file, settings.auth_token)
    try:
        guard = StreamGuard(settings.max_streams, settings.stream_idle_seconds)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    guards = [guard]
    store = store if store is not None else build_store(settings)
    metrics = None
    served = store
    interceptors: list[grpc.ServerInterceptor] = []
    if settings.metrics_port >= 0:
        metrics = ServerMetrics(
            store,
            max_pools=settings.metrics_max_pools,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            store_kind="redis" if settings.redis_url else "embedded",
        )
        served = InstrumentedStore(store, metrics)
        interceptors.append(metrics.interceptor())
    if tokens is not None:
        on_failure = None
        if metrics is not None:
            failures = metrics.auth_failures
            on_failure = lambda reason: failures.labels(reason).inc()  # noqa: E731
        interceptors.append(
            AuthInterceptor(tokens, on_failure, log_interval=settings.refusal_log_seconds)
        )
        if creds is None:
            log.warning("token auth is on without TLS: tokens travel in clear text")
    # Last, so that refused calls (auth) never take a stream slot.
    interceptors.append(guard.interceptor())
    opts = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    # A stream holds its thread for its whole life: the pool has one thread per
    # stream slot on top of the unary workers, so streams never take theirs.
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.workers + settings.max_streams, thread_name_prefix="bots-rpc"
        ),
        options=opts,
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    selector_pb2_grpc.add_TaskSelectorServicer_to_server(  # type: ignore[no-untyped-call]
        TaskSelectorServicer(served, settings), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    extra: list[grpc.Server] = []
    metrics_http = None
    health_server = None
    health_port = None
    try:
        port = _bind(server, settings.address, creds)
        if settings.health_port >= 0:
            health_guard = StreamGuard(HEALTH_PORT_STREAMS, settings.stream_idle_seconds)
            guards.append(health_guard)
            health_server = grpc.server(
                futures.ThreadPoolExecutor(
                    max_workers=4 + HEALTH_PORT_STREAMS, thread_name_prefix="bots-health"
                ),
                options=[("grpc.so_reuseport", 0)],
                interceptors=[health_guard.interceptor()],
            )
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_port = _bind(health_server, _join(settings.host, settings.health_port), None)
            extra.append(health_server)
        if metrics is not None:
            metrics_host = settings.metrics_host or settings.host
            try:
                metrics_http = MetricsHttpServer(
                    metrics.registry, metrics_host, settings.metrics_port
                )
            except OSError as exc:
                # Metrics are not on the request path: a taken port must not stop selection.
                log.error(
                    "cannot serve /metrics on %s: %s; serving without metrics",
                    _join(metrics_host, settings.metrics_port),
                    exc.strerror or exc,
                )
    except RuntimeError:
        for g in guards:
            g.close()
        store.close()
        raise
    server.start()
    for s in extra:
        s.start()
    for g in guards:
        g.start()
    running = RunningServer(
        server, store, health_servicer, port, settings, metrics=metrics,
        metrics_http=metrics_http, health_server=health_server, served_store=served,
        guards=tuple(guards),
    )  # fmt: skip
    running.health_port = health_port
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    running._set_serving(store.healthy())
    where = (
        f"Redis {redact_url(settings.redis_url)}"
        if settings.redis_url
        else f"data dir {settings.data_dir}"
    )
    security = ", ".join(
        part
        for part, on in (
            ("TLS" if not settings.tls_client_ca_file else "mutual TLS", creds is not None),
            ("token auth", tokens is not None),
        )
        if on
    )
    log.info(
        "serving bots.v1.TaskSelector on %s (%s%s)",
        running.address,
        where,
        f"; {security}" if security else "",
    )
    if running.metrics_port is not None:
        log.info(
            "metrics on http://%s/metrics",
            _join(settings.metrics_host or settings.host, running.metrics_port),
        )
    if running.health_port is not None:
        log.info("plaintext health checks on %s", _join(settings.host, running.health_port))
    return running


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(server: grpc.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
    try:
        if creds is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return port


def serve(settings: ServerSettings) -> int:
    """Runs the server in the foreground until SIGTERM or SIGINT; returns an exit code."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info("effective config: %s", settings.redacted())
    try:
        running = start_server(settings)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info(
            "received %s, draining for up to %.1fs",
            signal.Signals(signum).name,
            settings.grace_seconds,
        )
        threading.Thread(target=running.stop, name="bots-stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running.wait()
    return 0

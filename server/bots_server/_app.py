"""Assembles and runs the gRPC server: servicer, health, reflection, expiry, shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc
from bots_api.v1 import selector_pb2, selector_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bots_server._embedded import EmbeddedStore
from bots_server._servicer import TaskSelectorServicer
from bots_server._settings import ServerSettings, redact_url
from bots_server._store import Store

log = logging.getLogger("bots_server")

SERVICE_NAME = selector_pb2.DESCRIPTOR.services_by_name["TaskSelector"].full_name


def build_store(settings: ServerSettings) -> Store:
    """The Redis store when ``redis_url`` is set, else the embedded store."""
    if settings.redis_url:
        from bots_server._redis_store import RedisStore

        return RedisStore(
            settings.redis_url,
            cluster=settings.redis_cluster,
            timeout=settings.redis_timeout_seconds,
            checkpoint_every=settings.checkpoint_every,
            dedup_ttl=settings.dedup_ttl_seconds,
            selection_retention=settings.selection_retention_seconds,
            max_tasks_per_pool=settings.max_tasks_per_pool,
        )
    return EmbeddedStore(
        settings.data_dir,
        fsync=settings.fsync,
        snapshot_every=settings.snapshot_every,
        max_tasks_per_pool=settings.max_tasks_per_pool,
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
    ) -> None:
        self.server = server
        self.store = store
        self.health = health_servicer
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
                ok = self.store.healthy()
                if ok:
                    self.store.expire_due()
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
        self._watcher.join(timeout=5)
        self.store.close()
        log.info("server stopped")

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        self.server.wait_for_termination()


def start_server(settings: ServerSettings, store: Store | None = None) -> RunningServer:
    """Builds the store (unless given), binds the port and starts serving."""
    store = store if store is not None else build_store(settings)
    opts = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="bots-rpc"),
        options=opts,
        maximum_concurrent_rpcs=None,
    )
    selector_pb2_grpc.add_TaskSelectorServicer_to_server(  # type: ignore[no-untyped-call]
        TaskSelectorServicer(store, settings), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(settings.address)
    except RuntimeError as exc:
        store.close()
        raise RuntimeError(f"cannot listen on {settings.address}: {exc}") from None
    if port == 0:
        store.close()
        raise RuntimeError(f"cannot listen on {settings.address}")
    server.start()
    running = RunningServer(server, store, health_servicer, port, settings)
    running._set_serving(store.healthy())
    where = (
        f"Redis {redact_url(settings.redis_url)}"
        if settings.redis_url
        else f"data dir {settings.data_dir}"
    )
    log.info("serving bots.v1.TaskSelector on %s (%s)", running.address, where)
    return running


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

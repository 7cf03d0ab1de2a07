"""Stalled streams cannot starve the server: imports that stop sending and exports that
are never read take at most ``max_streams`` slots, unary calls and health keep
answering, and idle streams are cancelled so that their slots come back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_client import SelectorClient
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from grpc_health.v1 import health_pb2, health_pb2_grpc

Code = grpc.StatusCode
IDLE_SECONDS = 3.0
MAX_STREAMS = 8
# About 10 MB per export: more than gRPC's transport buffers for a reader that
# takes nothing (a 2.4 MB export was taken whole), so the server's send blocks.
POOL_TASKS = 20_000
KEY_PAD = "k" * 480


@pytest.fixture
def guarded_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(
        ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=str(tmp_path / "data"),
            fsync=False,
            metrics_port=-1,
            workers=4,
            max_streams=MAX_STREAMS,
            stream_idle_seconds=IDLE_SECONDS,
        )
    )
    yield running
    running.stop(grace=0)


def _header_then_silence(name: str, release: threading.Event, send_header: bool) -> Any:
    def requests() -> Iterator[pb.PosteriorChunk]:
        if send_header:
            first = pb.PosteriorChunk()
            first.header.name = name
            first.header.task_count = 10
            yield first
        release.wait(timeout=60)  # the client "stalls": no more messages, no half-close

    return requests()


def _timed(call: Any) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


def test_64_stalled_streams_leave_unary_calls_and_health_answering(
    guarded_server: RunningServer,
) -> None:
    address = guarded_server.address
    with SelectorClient(address, timeout=60) as client:
        client.create_pool("big", [f"{i:08d}{KEY_PAD}" for i in range(POOL_TASKS)])
    release = threading.Event()
    stalled_channel = grpc.insecure_channel(address)
    stalled = selector_pb2_grpc.TaskSelectorStub(stalled_channel)
    imports: list[Any] = []
    exports: list[Any] = []
    try:
        for i in range(32):
            # Half of the imports send their header and stop; half send nothing at all.
            requests = _header_then_silence(f"imp-{i}", release, send_header=i % 2 == 0)
            imports.append(stalled.ImportPosteriors.future(requests, timeout=60))
            # Never iterated: the client reads none of the export's messages.
            exports.append(
                stalled.ExportPosteriors(
                    pb.ExportPosteriorsRequest(pool="big", chunk_size=1000), timeout=60
                )
            )
        time.sleep(1.0)  # let the server take up all 64 calls

        with grpc.insecure_channel(address) as probe_channel:
            probe = selector_pb2_grpc.TaskSelectorStub(probe_channel)
            health = health_pb2_grpc.HealthStub(probe_channel)
            get_pool = _timed(lambda: probe.GetPool(pb.GetPoolRequest(pool="big"), timeout=2))
            check = _timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=2))
        print(f"under 64 stalled streams: GetPool {get_pool:.3f}s, health {check:.3f}s")
        assert get_pool < 2 and check < 2

        # Exactly the slots' worth of streams were admitted; the rest were refused
        # at once with a message that says why.
        # The slots' worth of streams were admitted; the rest were refused at once,
        # with a message that says why.
        refused = [x.exception() for x in imports + exports if x.done()]
        assert len(refused) == 64 - MAX_STREAMS
        assert all(e.code() == Code.RESOURCE_EXHAUSTED for e in refused)
        assert "too many streaming calls" in refused[0].details()
        # Every admitted stream, import or export, is stuck holding its slot.
        admitted_imports = [f for f in imports if not f.done()]
        print(
            f"admitted: {len(admitted_imports)} imports, {MAX_STREAMS - len(admitted_imports)} exports"
        )
        assert guarded_server.guards[0].in_use == MAX_STREAMS

        # After the idle timeout the stalled streams are cancelled and the slots free.
        deadline = time.monotonic() + IDLE_SECONDS + 5
        while guarded_server.guards[0].in_use and time.monotonic() < deadline:
            time.sleep(0.1)
        assert guarded_server.guards[0].in_use == 0
        for f in admitted_imports:
            assert f.exception(timeout=10).code() == Code.CANCELLED
    finally:
        release.set()
        for c in exports:
            c.cancel()
        stalled_channel.close()

    # The freed slots serve new streams: a full export and import round trip.
    with SelectorClient(address, timeout=60) as client:
        copied = client.import_posteriors(client.export_posteriors("big"), name="copy")
        assert copied.task_count == POOL_TASKS
        assert [p.name for p in client.list_pools()] == ["big", "copy"]


def test_a_stream_cancelled_for_idleness_creates_nothing(guarded_server: RunningServer) -> None:
    """A stream that sent every task it announced but never ended is not imported."""
    release = threading.Event()

    def requests() -> Iterator[pb.PosteriorChunk]:
        chunk = pb.PosteriorChunk()
        chunk.header.name = "complete-but-open"
        chunk.header.task_count = 1
        chunk.tasks.add(task=pb.Task(key="t0"), alpha=2.0, beta=3.0)
        yield chunk
        release.wait(timeout=60)

    with grpc.insecure_channel(guarded_server.address) as channel:
        stub = selector_pb2_grpc.TaskSelectorStub(channel)
        future = stub.ImportPosteriors.future(requests(), timeout=60)
        try:
            err = future.exception(timeout=IDLE_SECONDS + 10)
        finally:
            release.set()
        assert err is not None and err.code() == Code.CANCELLED
        pools = stub.ListPools(pb.ListPoolsRequest(), timeout=5).pools
        assert [p.name for p in pools] == []

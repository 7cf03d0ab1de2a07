"""ImportPosteriors checks its limits as the stream arrives and never buffers the whole
stream: a too-large header or a surplus task fails the call at once, and the
server's memory grows by little more than the pool it builds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_client import PoolConfig, PoolHeader, SelectorClient, Task, TaskPosterior
from bots_server._app import RunningServer

Code = grpc.StatusCode


def _stream_that_waits(
    first: pb.PosteriorChunk,
) -> tuple[Iterator[pb.PosteriorChunk], threading.Event]:
    """``first``, then nothing until released: the stream stays open, the rest unsent."""
    release = threading.Event()

    def requests() -> Iterator[pb.PosteriorChunk]:
        yield first
        if release.wait(timeout=30):
            late = pb.TaskPosterior(task=pb.Task(key="late"), alpha=1, beta=1)
            yield pb.PosteriorChunk(tasks=[late])

    return requests(), release


def test_a_header_over_the_task_limit_is_refused_before_any_task_is_sent(
    server: RunningServer,
) -> None:
    limit = server.settings.max_tasks_per_pool
    first = pb.PosteriorChunk()
    first.header.name = "huge"
    first.header.task_count = limit + 1
    requests, release = _stream_that_waits(first)
    with grpc.insecure_channel(server.address) as channel:
        stub = selector_pb2_grpc.TaskSelectorStub(channel)
        future = stub.ImportPosteriors.future(requests, timeout=30)
        try:
            # Answered while the client still holds back the rest of the stream.
            err = future.exception(timeout=10)
        finally:
            release.set()
        assert err is not None and err.code() == Code.RESOURCE_EXHAUSTED
        assert f"{limit + 1} tasks exceeds the limit of {limit}" in err.details()
        assert list(stub.ListPools(pb.ListPoolsRequest(), timeout=5).pools) == []


def test_more_tasks_than_the_header_announced_fail_as_soon_as_they_arrive(
    server: RunningServer,
) -> None:
    first = pb.PosteriorChunk()
    first.header.name = "short-header"
    first.header.task_count = 2
    for key in ("a", "b", "c"):
        first.tasks.add(task=pb.Task(key=key), alpha=1.0, beta=1.0)
    requests, release = _stream_that_waits(first)
    with grpc.insecure_channel(server.address) as channel:
        stub = selector_pb2_grpc.TaskSelectorStub(channel)
        future = stub.ImportPosteriors.future(requests, timeout=30)
        try:
            err = future.exception(timeout=10)  # the stream has not ended
        finally:
            release.set()
        assert err is not None and err.code() == Code.INVALID_ARGUMENT
        assert "more tasks than the 2 its header announced" in err.details()
        assert list(stub.ListPools(pb.ListPoolsRequest(), timeout=5).pools) == []


def test_a_header_with_a_bad_config_is_refused_before_any_task_is_sent(
    server: RunningServer,
) -> None:
    first = pb.PosteriorChunk()
    first.header.name = "bad-config"
    first.header.task_count = 1
    first.header.config.forgetting = 7.0  # outside [0, 1]
    requests, release = _stream_that_waits(first)
    with grpc.insecure_channel(server.address) as channel:
        stub = selector_pb2_grpc.TaskSelectorStub(channel)
        future = stub.ImportPosteriors.future(requests, timeout=30)
        try:
            err = future.exception(timeout=10)
        finally:
            release.set()
        assert err is not None and err.code() == Code.INVALID_ARGUMENT


# A server process whose store notes the process's peak memory (VmHWM) at the
# moment the servicer hands it the finished dump: what the import stream cost
# the servicer, apart from what the store then does with the pool.
_SERVER = textwrap.dedent(
    """
    import sys
    from bots_server._app import start_server
    from bots_server._embedded import EmbeddedStore
    from bots_server._settings import ServerSettings

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    class NotingStore(EmbeddedStore):
        def import_pool(self, dump):
            print("handoff", hwm(), flush=True)
            return super().import_pool(dump)

    settings = ServerSettings(host="127.0.0.1", port=0, data_dir=sys.argv[1], fsync=False,
                              metrics_port=-1)
    store = NotingStore(settings.data_dir, fsync=False)
    running = start_server(settings, store)
    # The compiled kernel loads in the background at start (numba: ~100 MiB the first
    # time); wait for it, so that its memory is not counted as the import's.
    from bots_core._select import kernel
    kernel()
    print("port", running.port, flush=True)
    sys.stdin.read()
    running.stop(grace=0)
    """
)


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_import_memory_stays_within_a_small_multiple_of_the_pool(tmp_path: Path) -> None:
    n = 200_000
    keys = [f"task-{i:09d}" for i in range(n)]
    # What the finished dump holds: six float64 arrays, the key list and its strings.
    dump_bytes = 6 * 8 * n + 8 * n + sum(sys.getsizeof(k) for k in keys)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline().split()[1])
        header = PoolHeader("warm", PoolConfig(), 1, 0, float("nan"), 0)
        with SelectorClient(f"127.0.0.1:{port}", timeout=120) as client:
            # A small import first, so that code paths and allocator arenas are warm.
            client.import_posteriors(header, [TaskPosterior(Task("w"), 1.0, 1.0)])
            assert proc.stdout.readline().startswith("handoff")
            before = _hwm(proc.pid)
            start = time.monotonic()
            info = client.import_posteriors(
                PoolHeader("big", PoolConfig(), n, 0, float("nan"), 0),
                (TaskPosterior(Task(k, 0.2, 0.6), 2.0, 3.0) for k in keys),
            )
            seconds = time.monotonic() - start
            assert info.task_count == n
        handoff = int(proc.stdout.readline().split()[1])
        after = _hwm(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
    mib = 2**20
    print(
        f"import of {n} tasks in {seconds:.1f}s: dump {dump_bytes / mib:.1f} MiB; peak growth "
        f"{(handoff - before) / mib:.1f} MiB until the store gets the dump, "
        f"{(after - before) / mib:.1f} MiB with the store's own work"
    )
    # Buffering the whole stream (the old servicer) cost 5.7x the dump by this point.
    assert handoff - before < 2.5 * dump_bytes

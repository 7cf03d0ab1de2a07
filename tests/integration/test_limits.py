"""Server limits, each refused with a clear error: message size, batch size, report size,
tasks per pool (both stores), concurrent RPCs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from service_procs import RedisProcess

Code = grpc.StatusCode


@pytest.fixture(params=["embedded", "redis"])
def make_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers with extra settings, on the embedded store or a real Redis."""
    redis = RedisProcess(tmp_path / "redis").start() if request.param == "redis" else None
    started: list[RunningServer] = []

    def make(**overrides: Any) -> RunningServer:
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=str(tmp_path / "data"),
            fsync=False,
            metrics_port=-1,
            redis_url=redis.url if redis is not None else "",
            **overrides,
        )
        running = start_server(settings)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(grace=0)
    if redis is not None:
        redis.stop()


def stub_for(running: RunningServer, channel_opts: Any = None) -> Any:
    channel = grpc.insecure_channel(running.address, options=channel_opts or [])
    return channel, selector_pb2_grpc.TaskSelectorStub(channel)


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def tasks(n: int, prefix: str = "t") -> list[pb.Task]:
    return [pb.Task(key=f"{prefix}{i}") for i in range(n)]


def test_a_message_over_max_message_bytes_is_resource_exhausted(
    make_server: Callable[..., RunningServer],
) -> None:
    running = make_server(max_message_bytes=64 * 1024)
    channel, stub = stub_for(running)
    with channel:
        big = pb.CreatePoolRequest(
            name="p", tasks=[pb.Task(key="k" * 500 + str(i)) for i in range(200)]
        )
        err = failure(lambda: stub.CreatePool(big, timeout=10))
        assert err.code() == Code.RESOURCE_EXHAUSTED
        assert "larger than max" in (err.details() or "")
        stub.CreatePool(
            pb.CreatePoolRequest(name="p", tasks=tasks(10)), timeout=10
        )  # small is fine


def test_a_batch_over_max_batch_size_is_invalid(make_server: Callable[..., RunningServer]) -> None:
    running = make_server(max_batch_size=8)
    channel, stub = stub_for(running)
    with channel:
        stub.CreatePool(pb.CreatePoolRequest(name="p", tasks=tasks(20)), timeout=10)
        err = failure(
            lambda: stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=9), timeout=10)
        )
        assert err.code() == Code.INVALID_ARGUMENT
        assert err.details() == "batch_size 9 exceeds the server limit 8"
        assert (
            len(stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=8), timeout=10).tasks)
            == 8
        )


def test_a_report_over_max_outcomes_per_report_is_invalid(
    make_server: Callable[..., RunningServer],
) -> None:
    running = make_server(max_outcomes_per_report=3)
    channel, stub = stub_for(running)
    with channel:
        stub.CreatePool(pb.CreatePoolRequest(name="p", tasks=tasks(5)), timeout=10)
        outcomes = [pb.Outcome(task_key=f"t{i}", successes=1, trials=2) for i in range(4)]
        request = pb.ReportOutcomesRequest(pool="p", request_id="r1", outcomes=outcomes)
        err = failure(lambda: stub.ReportOutcomes(request, timeout=10))
        assert err.code() == Code.INVALID_ARGUMENT
        assert "the server limit is 3" in (err.details() or "")


def test_tasks_over_max_tasks_per_pool_are_resource_exhausted(
    make_server: Callable[..., RunningServer],
) -> None:
    running = make_server(max_tasks_per_pool=10)
    channel, stub = stub_for(running)
    with channel:
        err = failure(
            lambda: stub.CreatePool(pb.CreatePoolRequest(name="big", tasks=tasks(11)), timeout=10)
        )
        assert err.code() == Code.RESOURCE_EXHAUSTED
        assert err.details() == "pool 'big' would hold 11 tasks; the limit is 10"
        stub.CreatePool(pb.CreatePoolRequest(name="p", tasks=tasks(8)), timeout=10)
        err = failure(
            lambda: stub.AddTasks(pb.AddTasksRequest(pool="p", tasks=tasks(3, "u")), timeout=10)
        )
        assert err.code() == Code.RESOURCE_EXHAUSTED
        assert err.details() == "pool 'p' would hold 11 tasks; the limit is 10"
        added = stub.AddTasks(pb.AddTasksRequest(pool="p", tasks=tasks(2, "u")), timeout=10)
        assert added.task_count == 10


def test_calls_over_max_concurrent_rpcs_are_resource_exhausted(
    make_server: Callable[..., RunningServer],
) -> None:
    running = make_server(max_concurrent_rpcs=1, workers=4)
    channel, stub = stub_for(running)
    release = threading.Event()
    first_sent = threading.Event()

    def held_import() -> Iterator[pb.PosteriorChunk]:
        # A client stream that stays open keeps its RPC (and the one slot) busy.
        # The first message makes sure the server has started handling it; the
        # header promises a task that never comes, so the import fails at the end.
        first = pb.PosteriorChunk()
        first.header.name = "held"
        first.header.task_count = 1
        yield first
        first_sent.set()
        release.wait(timeout=30)

    with channel:
        held = stub.ImportPosteriors.future(held_import(), timeout=30)
        try:
            assert first_sent.wait(timeout=10)
            refused = None
            for _ in range(200):  # the held call may take a moment to be admitted
                try:
                    stub.ListPools(pb.ListPoolsRequest(), timeout=10)
                except grpc.RpcError as err:
                    refused = err
                    break
                threading.Event().wait(0.05)
            assert refused is not None, "the concurrency limit never refused a call"
            assert refused.code() == Code.RESOURCE_EXHAUSTED
            assert "Concurrent RPC limit exceeded" in (refused.details() or "")
        finally:
            release.set()
        assert (
            failure(lambda: held.result(timeout=30)).code() == Code.INVALID_ARGUMENT
        )  # empty import
        stub.ListPools(pb.ListPoolsRequest(), timeout=10)  # the slot is free again

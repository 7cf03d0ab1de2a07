"""The sync and asyncio clients against a real server."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from bots_client import (
    AsyncSelectorClient,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    Outcome,
    PoolConfig,
    SelectionMode,
    SelectionState,
    SelectorClient,
    Task,
    TaskPosterior,
    UnavailableError,
    _channel,
)

TASKS = [Task(f"t{i}", weak=i / 40, strong=min(1.0, i / 40 + 0.3)) for i in range(20)]


@pytest.fixture
def client(target: str) -> Iterator[SelectorClient]:
    with SelectorClient(target, timeout=10) as c:
        yield c


# --- the quickstart flow ---------------------------------------------------------------


def test_quickstart_flow_updates_the_pool(client: SelectorClient) -> None:
    created = client.create_pool("math", TASKS, config=PoolConfig(seed=1))
    assert created.task_count == 20 and created.tasks_with_references == 20
    assert created.config.seed == 1 and created.config.mode is SelectionMode.THOMPSON
    assert created.steps_applied == 0 and math.isnan(created.last_effective_task_ratio)

    sel = client.select_batch("math", 4, run_id="run-1", step=0, expected_trials=8)
    assert len(sel.tasks) == 4 and len(set(sel.keys)) == 4
    assert not sel.replayed and sel.posterior_version == 0 and sel.expected_trials == 8

    half = [Outcome(k, 4, 8) for k in sel.keys[:2]]
    first = client.report_outcomes("math", half, selection_id=sel.selection_id)
    assert first.selection_state is SelectionState.OPEN and first.steps_applied == 0

    rest = {k: (8.0, 8.0) for k in sel.keys[2:]}
    second = client.report_outcomes("math", rest, selection_id=sel.selection_id)
    assert second.selection_state is SelectionState.APPLIED
    assert second.steps_applied == 1 and second.posterior_version == 1

    after = client.get_pool("math")
    assert after.steps_applied == 1 and after.selections_opened == 1
    assert after.open_selections == 0
    assert after.last_effective_task_ratio == pytest.approx(0.5)
    assert after.mean_posterior != created.mean_posterior
    assert [p.name for p in client.list_pools()] == ["math"]

    client.delete_pool("math")
    with pytest.raises(NotFoundError) as info:
        client.get_pool("math")
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert "math" in info.value.details


def test_standalone_report_is_a_step_of_its_own(client: SelectorClient) -> None:
    client.create_pool("eval", ["a", "b"])
    result = client.report_outcomes("eval", [("a", 1, 2)])
    assert result.selection_state is SelectionState.UNSPECIFIED
    assert result.steps_applied == 1
    assert client.get_pool("eval").steps_applied == 1


def test_create_pool_in_chunks_is_repeatable(client: SelectorClient) -> None:
    keys = [f"k{i}" for i in range(2_500)]
    info = client.create_pool("big", keys, chunk_size=1_000)
    assert info.task_count == 2_500
    again = client.create_pool("big", keys, chunk_size=700)
    assert again.task_count == 2_500
    assert client.add_tasks("big", [*keys[:10], "new"], chunk_size=4) == 1
    with pytest.raises(ConflictError) as info_err:
        client.create_pool("big", config=PoolConfig(forgetting=0.5))
    assert info_err.value.code is grpc.StatusCode.ALREADY_EXISTS


def test_selection_with_a_run_id_is_replayed(client: SelectorClient) -> None:
    client.create_pool("p", TASKS)
    first = client.select_batch("p", 5, run_id="r", step=3)
    again = client.select_batch("p", 5, run_id="r", step=3)
    assert again.replayed and again.selection_id == first.selection_id
    assert again.keys == first.keys and again.indices == first.indices
    other = client.select_batch("p", 5, run_id="r", step=4)
    assert not other.replayed and other.selection_id != first.selection_id


def test_invalid_requests_raise_invalid_request_error(client: SelectorClient) -> None:
    client.create_pool("p", ["a"])
    with pytest.raises(InvalidRequestError) as info:
        client.report_outcomes("p", [("a", 3, 2)])
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidRequestError):
        client.create_pool("bad name!")


# --- exactly-once reports -------------------------------------------------------------


def test_reused_request_id_returns_the_original_answer(client: SelectorClient) -> None:
    client.create_pool("p", TASKS)
    sel = client.select_batch("p", 2)
    outcomes = {k: (1, 4) for k in sel.keys}
    first = client.report_outcomes(
        "p", outcomes, selection_id=sel.selection_id, final=True, request_id="req-1"
    )
    again = client.report_outcomes(
        "p", outcomes, selection_id=sel.selection_id, final=True, request_id="req-1"
    )
    assert not first.duplicate and again.duplicate
    assert again.selection_state == first.selection_state
    assert again.posterior_version == first.posterior_version
    assert client.get_pool("p").steps_applied == 1

    with pytest.raises(ConflictError) as info:
        client.report_outcomes(
            "p", {k: (2, 4) for k in sel.keys}, selection_id=sel.selection_id, request_id="req-1"
        )
    assert info.value.code is grpc.StatusCode.ALREADY_EXISTS


class _LoseFirstResponse(grpc.UnaryUnaryClientInterceptor):
    """Lets the first ReportOutcomes reach the server, then reports UNAVAILABLE.

    This is what a client sees when a connection drops after the server
    applied a report but before its answer arrived.
    """

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/ReportOutcomes"):
            self.request_ids.append(request.request_id)
            if len(self.request_ids) == 1:
                outcome.result()  # the server has applied it
                return _Failed()
        return outcome


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection lost (injected)"


class _Failed:
    def result(self, timeout: float | None = None) -> Any:
        raise _Unavailable()


def test_lost_report_answer_is_retried_with_the_same_request_id(target: str) -> None:
    interceptor = _LoseFirstResponse()
    base = grpc.insecure_channel(target, options=_channel.channel_options(3))
    with base, SelectorClient(channel=grpc.intercept_channel(base, interceptor)) as client:
        client.create_pool("p", TASKS)
        sel = client.select_batch("p", 2)
        result = client.report_outcomes(
            "p", {k: (2, 4) for k in sel.keys}, selection_id=sel.selection_id, final=True
        )
        assert len(interceptor.request_ids) == 2
        assert interceptor.request_ids[0] == interceptor.request_ids[1]
        assert result.duplicate and result.selection_state is SelectionState.APPLIED
        assert client.get_pool("p").steps_applied == 1


# --- deadlines ------------------------------------------------------------------------


def test_unreachable_server_fails_fast_with_unavailable(refused_target: str) -> None:
    start = time.monotonic()
    with (
        SelectorClient(refused_target, timeout=2.0, retries=2) as client,
        pytest.raises(UnavailableError) as info,
    ):
        client.get_pool("p")
    assert time.monotonic() - start < 2.0 + 1.5
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_deadline_is_honoured_when_the_server_hangs(silent_target: str) -> None:
    start = time.monotonic()
    with (
        SelectorClient(silent_target, timeout=0.5, retries=2) as client,
        pytest.raises(UnavailableError) as info,
    ):
        client.list_pools()
    elapsed = time.monotonic() - start
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.4 <= elapsed < 0.5 + 1.5


def test_report_is_retried_after_timeouts_within_a_bound(silent_target: str) -> None:
    start = time.monotonic()
    with (
        SelectorClient(silent_target, timeout=0.3, retries=2) as client,
        pytest.raises(UnavailableError),
    ):
        client.report_outcomes("p", [("a", 1, 1)])
    elapsed = time.monotonic() - start
    # Three attempts of 0.3 s each, plus at most 0.1 + 0.2 s of backoff.
    assert 0.85 <= elapsed < 3 * 0.3 + 0.3 + 1.5


def test_per_call_timeout_overrides_the_default(silent_target: str) -> None:
    start = time.monotonic()
    with (
        SelectorClient(silent_target, timeout=30, retries=0) as client,
        pytest.raises(UnavailableError),
    ):
        client.get_pool("p", timeout=0.3)
    assert time.monotonic() - start < 0.3 + 1.5


# --- export / import --------------------------------------------------------------------


def test_export_import_round_trip_under_a_new_name(client: SelectorClient) -> None:
    client.create_pool("src", TASKS, config=PoolConfig(forgetting=0.2, seed=5))
    sel = client.select_batch("src", 3)
    client.report_outcomes(
        "src", {k: (1, 4) for k in sel.keys}, selection_id=sel.selection_id, final=True
    )

    chunks = list(client.export_posteriors("src", 7))
    assert [len(ts) for _, ts in chunks] == [7, 7, 6]
    header = chunks[0][0]
    assert all(h is header for h, _ in chunks)
    assert header.name == "src" and header.task_count == 20 and header.steps_applied == 1
    assert header.config.forgetting == 0.2

    info = client.import_posteriors(chunks, name="copy")
    assert info.name == "copy" and info.task_count == 20 and info.steps_applied == 1
    copied = [p for _, ps in client.export_posteriors("copy") for p in ps]
    assert copied == [p for _, ps in chunks for p in ps]

    flat = client.import_posteriors(header, copied, name="flat", chunk_size=6)
    assert flat.task_count == 20
    with pytest.raises(ConflictError):
        client.import_posteriors(chunks)  # "src" exists


def test_import_stops_cleanly_when_the_source_fails(client: SelectorClient) -> None:
    client.create_pool("src", TASKS)
    header, posteriors = next(iter(client.export_posteriors("src")))

    def broken() -> Iterator[TaskPosterior]:
        yield posteriors[0]
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        client.import_posteriors(header, broken(), name="half", chunk_size=1)
    with pytest.raises(NotFoundError):
        client.get_pool("half")


def test_export_of_unknown_pool_raises_not_found(client: SelectorClient) -> None:
    with pytest.raises(NotFoundError):
        list(client.export_posteriors("nope"))


# --- asyncio client -------------------------------------------------------------------


def test_async_client_runs_the_same_flow(target: str) -> None:
    async def flow() -> None:
        async with AsyncSelectorClient(target, timeout=10) as client:
            created = await client.create_pool("math", TASKS, chunk_size=6)
            assert created.task_count == 20
            sel = await client.select_batch("math", 4, run_id="r", step=0)
            assert (await client.select_batch("math", 4, run_id="r", step=0)).replayed
            outcomes = {k: (2.0, 4.0) for k in sel.keys}
            result = await client.report_outcomes(
                "math", outcomes, selection_id=sel.selection_id, final=True, request_id="x"
            )
            assert result.selection_state is SelectionState.APPLIED
            again = await client.report_outcomes(
                "math", outcomes, selection_id=sel.selection_id, final=True, request_id="x"
            )
            assert again.duplicate
            info = await client.get_pool("math")
            assert info.steps_applied == 1 and info.selections_opened == 1
            assert [p.name for p in await client.list_pools()] == ["math"]

            chunks = [c async for c in client.export_posteriors("math", 8)]
            assert sum(len(ts) for _, ts in chunks) == 20
            copy = await client.import_posteriors(chunks, name="copy")
            assert copy.task_count == 20 and copy.steps_applied == 1

            async def flat() -> Any:
                for _, ts in chunks:
                    for t in ts:
                        yield t

            copy2 = await client.import_posteriors(chunks[0][0], flat(), name="copy2")
            assert copy2.task_count == 20

            await client.delete_pool("math")
            with pytest.raises(NotFoundError):
                await client.get_pool("math")
            with pytest.raises(ConflictError):
                await client.create_pool("copy", config=PoolConfig(forgetting=0.9))

    asyncio.run(flow())


def test_async_client_honours_deadlines_and_can_be_made_outside_a_loop(
    silent_target: str,
) -> None:
    client = AsyncSelectorClient(silent_target, timeout=0.3, retries=1)

    async def call() -> None:
        async with client:
            with pytest.raises(UnavailableError) as info:
                await client.get_pool("p")
            assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED

    start = time.monotonic()
    asyncio.run(call())
    assert time.monotonic() - start < 0.3 + 1.5


def test_async_import_cancels_when_the_source_fails(target: str) -> None:
    """A source that fails mid-stream leaves no pool behind.

    The first chunk holds 5 of the 20 tasks: the server commits only a stream
    that holds every task its header announces. (A source that fails after
    its last task has sent a whole pool; whether the cancel or the end of the
    stream reaches the server first is then a race, seen under load.)
    """

    async def run() -> None:
        async with AsyncSelectorClient(target) as client:
            await client.create_pool("src", TASKS)
            chunks = [c async for c in client.export_posteriors("src", chunk_size=5)]
            assert len(chunks) == 4

            async def broken() -> Any:
                yield chunks[0]
                raise OSError("disk went away")

            with pytest.raises(OSError, match="disk went away"):
                await client.import_posteriors(broken(), name="half")
            with pytest.raises(NotFoundError):
                await client.get_pool("half")

    asyncio.run(run())

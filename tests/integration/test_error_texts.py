"""Error statuses survive long caller values, and client-side checks raise the client's
errors: a 20 KB name, key or id comes back as the right code with a short message
(gRPC drops a status whose text passes ~8 KB and the caller would see an unrelated
RESOURCE_EXHAUSTED), and a bad argument refused before any call is an
InvalidRequestError."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from bots_client import (
    AsyncSelectorClient,
    BotsError,
    InvalidRequestError,
    NotFoundError,
    SelectorClient,
)
from bots_server._app import RunningServer
from bots_server._errors import MAX_MESSAGE_BYTES, cap_message, short

Code = grpc.StatusCode
LONG = "x" * 20_000
LONG_WIDE = "é" * 20_000  # 40 KB of UTF-8, 120 KB once gRPC percent-encodes it


def _failure(call: Callable[[], Any]) -> BotsError:
    with pytest.raises(BotsError) as info:
        call()
    return info.value


@pytest.fixture
def client(server: RunningServer) -> Any:
    with SelectorClient(server.address, timeout=10, retries=0) as c:
        c.create_pool("p", ["t0", "t1", "t2"])
        yield c


@pytest.mark.parametrize("value", [LONG, LONG_WIDE], ids=["ascii", "non-ascii"])
def test_long_values_come_back_as_the_right_status_with_a_short_message(
    client: SelectorClient, value: str
) -> None:
    cases: list[tuple[str, Callable[[], Any], Code]] = [
        ("pool name", lambda: client.get_pool(value), Code.NOT_FOUND),
        ("deleted pool", lambda: client.delete_pool(value), Code.NOT_FOUND),
        ("task key", lambda: client.add_tasks("p", [value]), Code.INVALID_ARGUMENT),
        (
            "selection id",
            lambda: client.report_outcomes("p", {"t0": (1, 2)}, selection_id=value),
            Code.NOT_FOUND,
        ),
        ("reported key", lambda: client.report_outcomes("p", {value: (1, 2)}), Code.NOT_FOUND),
        ("request id", lambda: client.report_outcomes("p", {"t0": (1, 2)}, request_id=value),
         Code.INVALID_ARGUMENT),
        ("run id", lambda: client.select_batch("p", 1, run_id=value), Code.INVALID_ARGUMENT),
    ]  # fmt: skip
    for what, call, code in cases:
        err = _failure(call)
        assert err.code == code, f"{what}: {err.code} {err.details[:200]}"
        assert len(err.details.encode("utf-8")) <= MAX_MESSAGE_BYTES, what
    # Nothing was changed by any of them.
    assert [p.name for p in client.list_pools()] == ["p"]
    assert client.get_pool("p").task_count == 3
    assert client.get_pool("p").steps_applied == 0


def test_an_unknown_long_selection_is_not_found_and_named_by_a_prefix(
    client: SelectorClient,
) -> None:
    err = _failure(lambda: client.report_outcomes("p", {"t0": (1, 2)}, selection_id=LONG))
    assert isinstance(err, NotFoundError)
    assert "xxxxxxxx" in err.details  # the prefix tells the caller which value it was


def test_short_and_cap_message_keep_a_prefix_and_say_how_long_the_value_was() -> None:
    assert short("pool-1") == "'pool-1'"
    assert short(LONG) == repr("x" * 64) + "…(20000 chars)"
    assert short(LONG, 8) == "'xxxxxxxx'…(20000 chars)"
    capped = cap_message("unknown pool " + LONG_WIDE)
    assert len(capped.encode("utf-8")) <= MAX_MESSAGE_BYTES
    assert capped.startswith("unknown pool éé") and capped.endswith("…(truncated)")
    assert cap_message("fine") == "fine"


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda c: c.select_batch("p", -1), "batch_size"),
        (lambda c: c.select_batch("p", 0), "batch_size"),
        (lambda c: c.select_batch("p", 2**32), "batch_size"),
        (lambda c: c.select_batch("p", 1, step=-1), "step"),
        (lambda c: c.select_batch("p", 1, timeout=0), "timeout"),
        (lambda c: list(c.export_posteriors("p", chunk_size=0)), "chunk_size"),
        (lambda c: c.add_tasks("p", ["t9"], chunk_size=0), "chunk_size"),
        (lambda c: c.add_tasks("p", [{"key": "t9", "weak": "high"}]), "could not convert"),
        (lambda c: c.report_outcomes("p", {"t0": ("one", 2)}), "could not convert"),
    ],
    ids=["negative", "zero", "too-large", "step", "timeout", "export", "add", "weak", "outcome"],
)
def test_bad_arguments_are_invalid_request_errors_before_any_call(
    client: SelectorClient, call: Callable[[SelectorClient], Any], needle: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        call(client)
    assert info.value.code is None  # refused by the client, not by the server
    assert needle in info.value.details
    assert client.get_pool("p").task_count == 3


def test_the_async_client_refuses_a_negative_batch_the_same_way(server: RunningServer) -> None:
    async def main() -> None:
        async with AsyncSelectorClient(server.address, timeout=10) as c:
            with pytest.raises(InvalidRequestError, match="batch_size"):
                await c.select_batch("p", -1)

    asyncio.run(main())

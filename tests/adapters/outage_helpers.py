"""Shared pieces of the outage tests: a `bots serve` subprocess and evidence bookkeeping."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from bots_client import Outcome, PoolConfig, SelectorClient
from service_procs import ServerProcess, free_port

# Plain evidence sums: alpha = 1 + successes, beta = 1 + failures, whatever the order or steps.
SUMS = PoolConfig(forgetting=0.0, implicit_weight=0.0)


def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """`bots serve` on a free port and its own data dir (fsync on: what it acked survives kill -9)."""
    proc = ServerProcess(
        tmp_path / "bots-data", free_port(), "--metrics-port=-1", "--expiry-interval-seconds=0.2"
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# gRPC waits up to 120 s between reconnection attempts after failures; tests (and trainers
# that want to notice a returning service quickly) shorten that.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def totals(outcomes: Iterable[Outcome]) -> dict[str, tuple[float, float]]:
    """Per task (successes, trials)."""
    out: dict[str, tuple[float, float]] = {}
    for o in outcomes:
        s, t = out.get(o.task_key, (0.0, 0.0))
        out[o.task_key] = (s + o.successes, t + o.trials)
    return out


def applied_totals(client: SelectorClient, pool: str) -> dict[str, tuple[float, float]]:
    """Per task (alpha - 1, alpha + beta - 2): the evidence a `SUMS` pool has applied."""
    out = {}
    for _, chunk in client.export_posteriors(pool):
        for p in chunk:
            if p.alpha + p.beta > 2:
                out[p.task.key] = (p.alpha - 1, p.alpha + p.beta - 2)
    return out


def assert_same_totals(
    got: dict[str, tuple[float, float]], want: dict[str, tuple[float, float]]
) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k]), k

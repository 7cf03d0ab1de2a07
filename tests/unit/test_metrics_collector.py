"""Metrics without a network: the pool collector, the instrumented store, the RPC interceptor.

Every test builds its metrics in a fresh CollectorRegistry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from bots_core import PoolConfig, TaskSpec
from bots_server._errors import AlreadyExists, DataLoss, NotFound, StoreUnavailable
from bots_server._metrics import InstrumentedStore, ServerMetrics, split_method
from bots_server._model import (
    POSTERIOR_MEAN_BUCKETS,
    OutcomeIn,
    PoolStats,
    ReportAck,
    RunStats,
    SelectionState,
    SelectionView,
)
from bots_server._store import PoolDump, Store
from prometheus_client import CollectorRegistry, generate_latest


def stats(name: str, **kw: Any) -> PoolStats:
    base = PoolStats(
        name=name,
        config=PoolConfig(),
        task_count=10,
        steps_applied=7,
        open_selections=2,
        last_effective_task_ratio=0.5,
        rolling_effective_task_ratio=0.4,
        capability=0.3,
        tasks_with_references=6,
        selections_opened=9,
        selections_expired=1,
        mean_posterior=0.45,
        positive_ratio=0.75,
        rolling_positive_ratio=0.7,
        below_one_ratio=0.8,
        rolling_below_one_ratio=0.85,
        estimator_pearson=0.6,
        estimator_roc_auc=0.8,
        estimator_pairs=40,
        posterior_mean_counts=(0, 1, 2, 3, 4, 0, 0, 0, 0, 0),
    )
    return dataclasses.replace(base, **kw)


class FakeStore(Store):
    """Answers from fields; raises ``fail`` (when set) from every operation."""

    def __init__(self, pools: Sequence[PoolStats] = ()) -> None:
        self.pools = list(pools)
        self.up = True
        self.fail: Exception | None = None
        self.replayed = False
        self.duplicate = False

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def create_pool(
        self, name: str, config: PoolConfig, tasks: Sequence[TaskSpec]
    ) -> tuple[PoolStats, bool, int]:
        self._check()
        return stats(name), True, len(tasks)

    def add_tasks(self, name: str, tasks: Sequence[TaskSpec]) -> tuple[int, int]:
        self._check()
        return len(tasks), len(tasks)

    def get_pool(self, name: str) -> PoolStats:
        self._check()
        return stats(name)

    def list_pools(self) -> list[PoolStats]:
        self._check()
        return list(self.pools)

    def delete_pool(self, name: str) -> None:
        self._check()

    def select(
        self,
        name: str,
        batch_size: int,
        run_id: str,
        step: int,
        expected_trials: float,
        wait_seconds: float = 0.0,
    ) -> SelectionView:
        self._check()
        n = batch_size
        keys = [f"t{i}" for i in range(n)]
        return SelectionView(
            "s-1", keys, list(range(n)), [0.5] * n, [0.5] * n, self.replayed, 0, 8.0
        )

    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
        run_id: str = "",
    ) -> ReportAck:
        self._check()
        return ReportAck(self.duplicate, SelectionState.APPLIED, 1, 1)

    def export_pool(self, name: str) -> PoolDump:
        raise NotImplementedError

    def import_pool(self, dump: PoolDump) -> PoolStats:
        raise NotImplementedError

    def expire_due(self) -> int:
        self._check()
        return 2

    def healthy(self) -> bool:
        return self.up

    def close(self) -> None:
        pass


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """One sample; note that each call is a whole scrape."""
    return registry.get_sample_value(name, labels)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


# ------------------------------------------------------------ pool collector


def test_pool_metrics_are_read_from_the_store_at_scrape_time(registry: CollectorRegistry) -> None:
    store = FakeStore([stats("a")])
    ServerMetrics(store, registry=registry)
    assert value(registry, "bots_pool_tasks", pool="a") == 10
    store.pools = [stats("a", task_count=12, steps_applied=8)]
    assert value(registry, "bots_pool_tasks", pool="a") == 12
    assert value(registry, "bots_pool_steps_applied_total", pool="a") == 8
    assert value(registry, "bots_pool_selections_opened_total", pool="a") == 9
    assert value(registry, "bots_pool_selections_expired_total", pool="a") == 1
    assert value(registry, "bots_pool_open_selections", pool="a") == 2
    assert value(registry, "bots_pool_tasks_with_references", pool="a") == 6
    assert value(registry, "bots_pool_effective_task_ratio", pool="a", window="last") == 0.5
    assert value(registry, "bots_pool_effective_task_ratio", pool="a", window="rolling") == 0.4
    assert value(registry, "bots_pool_pass_rate_above_zero_ratio", pool="a", window="last") == 0.75
    assert (
        value(registry, "bots_pool_pass_rate_below_one_ratio", pool="a", window="rolling") == 0.85
    )
    assert value(registry, "bots_pool_capability", pool="a") == 0.3
    assert value(registry, "bots_pool_estimator_pearson_correlation", pool="a") == 0.6
    assert value(registry, "bots_pool_estimator_roc_auc", pool="a") == 0.8
    assert value(registry, "bots_pool_estimator_pairs", pool="a") == 40
    assert value(registry, "bots_pools") == 1
    assert value(registry, "bots_store_up") == 1


def test_posterior_histogram_is_cumulative_with_explicit_buckets(
    registry: CollectorRegistry,
) -> None:
    ServerMetrics(FakeStore([stats("a")]), registry=registry)
    cumulative = [0, 1, 3, 6, 10, 10, 10, 10, 10, 10]
    for bound, expected in zip(POSTERIOR_MEAN_BUCKETS, cumulative, strict=True):
        assert (
            value(registry, "bots_pool_posterior_mean_bucket", pool="a", le=str(bound)) == expected
        )
    assert value(registry, "bots_pool_posterior_mean_bucket", pool="a", le="+Inf") == 10
    assert value(registry, "bots_pool_posterior_mean_count", pool="a") == 10
    assert value(registry, "bots_pool_posterior_mean_sum", pool="a") == pytest.approx(4.5)


def test_unknown_statistics_are_left_out_rather_than_exported_as_nan(
    registry: CollectorRegistry,
) -> None:
    nan = math.nan
    fresh = stats(
        "new", capability=nan, last_effective_task_ratio=nan, estimator_roc_auc=nan,
        estimator_pearson=nan, positive_ratio=nan,
    )  # fmt: skip
    ServerMetrics(FakeStore([fresh]), registry=registry)
    assert value(registry, "bots_pool_capability", pool="new") is None
    assert value(registry, "bots_pool_effective_task_ratio", pool="new", window="last") is None
    assert value(registry, "bots_pool_estimator_roc_auc", pool="new") is None
    assert value(registry, "bots_pool_tasks", pool="new") == 10
    assert "NaN" not in generate_latest(registry).decode().split("# HELP process_")[0]


def test_per_pool_series_are_bounded_by_max_pools(registry: CollectorRegistry) -> None:
    pools = [stats(f"pool-{i:03d}") for i in range(30)]
    ServerMetrics(FakeStore(pools[::-1]), max_pools=5, registry=registry)
    text = generate_latest(registry).decode()
    names = {
        line.split('pool="')[1].split('"')[0] for line in text.splitlines() if 'pool="' in line
    }
    assert names == {f"pool-{i:03d}" for i in range(5)}  # the first ones by name
    assert value(registry, "bots_pools") == 30
    assert value(registry, "bots_pools_unexported") == 25
    per_pool = [line for line in text.splitlines() if 'pool="pool-000"' in line]
    assert len(per_pool) <= 30


def test_runs_of_a_pool_are_listed_busiest_first_and_bounded(registry: CollectorRegistry) -> None:
    runs = tuple(
        RunStats(f"run-{i:02d}", 0.0, 1.0, 40 - i, 0.1 * i, 0.5, 0.4, i < 3) for i in range(20)
    )
    ServerMetrics(FakeStore([dataclasses.replace(stats("a"), runs=runs)]), registry=registry)
    got = scrape(registry)
    steps = {dict(k[1])["run"]: v for k, v in got.items() if k[0] == "bots_pool_run_steps_total"}
    assert steps == {f"run-{i:02d}": 40 - i for i in range(16)}  # the 16 busiest
    assert got[("bots_pool_run_capability", (("pool", "a"), ("run", "run-02")))] == 0.2
    assert got[("bots_pool_runs_active", (("pool", "a"),))] == 3


def test_an_unreachable_store_gives_store_up_zero_and_no_pool_series(
    registry: CollectorRegistry,
) -> None:
    store = FakeStore([stats("a")])
    store.up = False
    ServerMetrics(store, registry=registry)
    one = scrape(registry)
    assert one[("bots_store_up", ())] == 0
    assert ("bots_pool_tasks", (("pool", "a"),)) not in one
    assert one[("bots_metrics_pool_read_failures_total", ())] == 1
    assert scrape(registry)[("bots_metrics_pool_read_failures_total", ())] == 2  # per scrape


def test_a_failing_pool_read_does_not_break_the_scrape(registry: CollectorRegistry) -> None:
    store = FakeStore([stats("a")])
    store.fail = StoreUnavailable("down")
    ServerMetrics(store, registry=registry)
    one = scrape(registry)
    assert one[("bots_rpc_in_flight", ())] == 0
    assert one[("bots_store_up", ())] == 1
    assert one[("bots_metrics_pool_read_failures_total", ())] == 1


class EpochStore(FakeStore):
    epoch = "aaaa"


def test_redis_epoch_is_exported_and_its_changes_counted(registry: CollectorRegistry) -> None:
    store = EpochStore()
    ServerMetrics(store, registry=registry)
    assert value(registry, "bots_redis_epoch_info", epoch="aaaa") == 1
    assert value(registry, "bots_redis_epoch_changes_total") == 0
    store.epoch = "bbbb"
    assert value(registry, "bots_redis_epoch_info", epoch="bbbb") == 1
    assert value(registry, "bots_redis_epoch_info", epoch="aaaa") is None
    assert value(registry, "bots_redis_epoch_changes_total") == 1


def test_an_embedded_store_has_no_epoch_metrics(registry: CollectorRegistry) -> None:
    ServerMetrics(FakeStore(), registry=registry)
    assert "bots_redis_epoch" not in generate_latest(registry).decode()


# -------------------------------------------------------- instrumented store


def test_selections_and_replays_are_counted(registry: CollectorRegistry) -> None:
    inner = FakeStore()
    store = InstrumentedStore(inner, ServerMetrics(inner, registry=registry))
    store.select("p", 4, "run", 0, 0.0)
    inner.replayed = True
    store.select("p", 4, "run", 0, 0.0)
    assert value(registry, "bots_selections_total") == 1
    assert value(registry, "bots_selected_tasks_total") == 4
    assert value(registry, "bots_selection_replays_total") == 1
    assert value(registry, "bots_store_operation_duration_seconds_count", operation="select") == 2


def test_reports_are_counted_by_result(registry: CollectorRegistry) -> None:
    inner = FakeStore()
    store = InstrumentedStore(inner, ServerMetrics(inner, registry=registry))
    outcomes = [OutcomeIn("t0", 1, 4), OutcomeIn("t1", 2, 4)]
    store.report("p", "r1", "", outcomes, False)
    inner.duplicate = True
    store.report("p", "r1", "", outcomes, False)
    inner.fail = AlreadyExists("reused")
    with pytest.raises(AlreadyExists):
        store.report("p", "r1", "", outcomes[:1], False)
    assert value(registry, "bots_reports_total", result="accepted") == 1
    assert value(registry, "bots_reports_total", result="duplicate") == 1
    assert value(registry, "bots_reports_total", result="conflict") == 1
    assert value(registry, "bots_reported_outcomes_total") == 2
    assert value(registry, "bots_reported_trials_total") == 8


def test_store_errors_count_store_failures_but_not_request_errors(
    registry: CollectorRegistry,
) -> None:
    inner = FakeStore()
    store = InstrumentedStore(inner, ServerMetrics(inner, registry=registry))
    for exc in (NotFound("no pool"), StoreUnavailable("down"), DataLoss("reset"), OSError("x")):
        inner.fail = exc
        with pytest.raises(type(exc)):
            store.get_pool("p")
    assert value(registry, "bots_store_errors_total", operation="get_pool", kind="unavailable") == 1
    assert value(registry, "bots_store_errors_total", operation="get_pool", kind="data_loss") == 1
    assert value(registry, "bots_store_errors_total", operation="get_pool", kind="internal") == 1
    assert value(registry, "bots_store_operation_duration_seconds_count", operation="get_pool") == 4


def test_expired_selections_are_counted(registry: CollectorRegistry) -> None:
    inner = FakeStore()
    store = InstrumentedStore(inner, ServerMetrics(inner, registry=registry))
    assert store.expire_due() == 2
    assert value(registry, "bots_selections_expired_total") == 2


# ------------------------------------------------------------ interceptor


class FakeContext:
    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise RuntimeError(details)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def intercept(metrics: ServerMetrics, method: str, handler: Any) -> Any:
    return metrics.interceptor().intercept_service(lambda _: handler, Details(method))  # type: ignore[arg-type]


def test_unary_calls_are_counted_and_timed_by_method_and_code(registry: CollectorRegistry) -> None:
    m = ServerMetrics(FakeStore(), registry=registry)

    def ok(request: Any, context: Any) -> str:
        return "fine"

    def missing(request: Any, context: Any) -> str:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such pool")
        return "unreachable"

    h_ok = intercept(m, "/bots.v1.TaskSelector/GetPool", grpc.unary_unary_rpc_method_handler(ok))
    h_missing = intercept(
        m, "/bots.v1.TaskSelector/GetPool", grpc.unary_unary_rpc_method_handler(missing)
    )
    assert h_ok.unary_unary(None, FakeContext()) == "fine"
    with pytest.raises(RuntimeError):
        h_missing.unary_unary(None, FakeContext())
    labels = {"service": "bots.v1.TaskSelector", "method": "GetPool"}
    assert value(registry, "bots_rpc_started_total", **labels) == 2
    assert value(registry, "bots_rpc_handled_total", **labels, code="OK") == 1
    assert value(registry, "bots_rpc_handled_total", **labels, code="NOT_FOUND") == 1
    assert value(registry, "bots_rpc_duration_seconds_count", **labels, code="NOT_FOUND") == 1
    assert value(registry, "bots_rpc_in_flight") == 0


def test_a_crash_without_status_counts_as_unknown(registry: CollectorRegistry) -> None:
    m = ServerMetrics(FakeStore(), registry=registry)

    def boom(request: Any, context: Any) -> str:
        raise ValueError("bug")

    h = intercept(m, "/bots.v1.TaskSelector/ListPools", grpc.unary_unary_rpc_method_handler(boom))
    with pytest.raises(ValueError):
        h.unary_unary(None, FakeContext())
    assert (
        value(
            registry,
            "bots_rpc_handled_total",
            service="bots.v1.TaskSelector",
            method="ListPools",
            code="UNKNOWN",
        )
        == 1
    )


def test_streams_are_timed_to_their_end_and_cancellation_is_labelled(
    registry: CollectorRegistry,
) -> None:
    m = ServerMetrics(FakeStore(), registry=registry)

    def chunks(request: Any, context: Any) -> Iterator[int]:
        yield from range(3)

    method = "/bots.v1.TaskSelector/ExportPosteriors"
    h = intercept(m, method, grpc.unary_stream_rpc_method_handler(chunks))
    assert list(h.unary_stream(None, FakeContext())) == [0, 1, 2]
    assert value(registry, "bots_rpc_in_flight") == 0
    partial = h.unary_stream(None, FakeContext())
    next(partial)
    assert value(registry, "bots_rpc_in_flight") == 1
    partial.close()  # what gRPC does when the client goes away
    labels = {"service": "bots.v1.TaskSelector", "method": "ExportPosteriors"}
    assert value(registry, "bots_rpc_handled_total", **labels, code="OK") == 1
    assert value(registry, "bots_rpc_handled_total", **labels, code="CANCELLED") == 1
    assert value(registry, "bots_rpc_in_flight") == 0


def test_unknown_methods_are_left_to_grpc(registry: CollectorRegistry) -> None:
    m = ServerMetrics(FakeStore(), registry=registry)
    assert intercept(m, "/x.Y/Z", None) is None
    assert "bots_rpc_started_total{" not in generate_latest(registry).decode()


def test_split_method() -> None:
    assert split_method("/bots.v1.TaskSelector/SelectBatch") == (
        "bots.v1.TaskSelector",
        "SelectBatch",
    )
    assert split_method("/grpc.health.v1.Health/Check") == ("grpc.health.v1.Health", "Check")

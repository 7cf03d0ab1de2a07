"""The per-pool metrics, read from the store when Prometheus scrapes (a custom Collector).

Cardinality: one ``pool`` label value per pool, for at most ``max_pools``
pools (the first ones by name); ``bots_pools_unexported`` says how many were
left out. Each exported pool adds at most 30 series (13 of them the posterior-mean
histogram) plus 3 per run for its 16 busiest runs, so the default of 50 pools
costs at most 3,900 series per replica. A scrape reads every pool's statistics once (``Store.list_pools``),
which is a pass over each pool's posteriors: O(total tasks).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from bots_server._model import POSTERIOR_MEAN_BUCKETS, PoolStats
from bots_server._store import Store

log = logging.getLogger(__name__)

# Runs of one pool given their own series (the busiest ones); bounds the `run` label.
MAX_RUNS_PER_POOL = 16


class PoolCollector:
    """Collects pool statistics, store health and the Redis epoch at scrape time."""

    def __init__(self, store: Store, *, max_pools: int, registry: CollectorRegistry) -> None:
        self.store = store
        self.max_pools = max(0, max_pools)
        self._lock = threading.Lock()
        self._epoch: str | None = None
        self._epoch_changes = 0
        self._failures = 0
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        # Names are only known per scrape; an empty description skips the
        # registry's duplicate check for this collector.
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes would double the store load
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        try:
            up = bool(self.store.healthy())
        except Exception:
            up = False
        yield _gauge(
            "bots_store_up",
            "1 when the store answers (Redis reachable, data dir writable).",
            float(up),
        )
        yield from self._epoch_metrics()
        pools: list[PoolStats] = []
        if up:
            try:
                pools = self.store.list_pools()
            except Exception as exc:
                self._failures += 1
                log.warning("metrics: could not read pool statistics: %s", type(exc).__name__)
        else:
            self._failures += 1
        shown = sorted(pools, key=lambda p: p.name)[: self.max_pools]
        yield _gauge("bots_pools", "Pools in the store.", float(len(pools)))
        yield _gauge(
            "bots_pools_unexported",
            "Pools left out of the per-pool metrics (beyond metrics_max_pools).",
            float(len(pools) - len(shown)),
        )
        yield from pool_metrics(shown)
        yield CounterMetricFamily(
            "bots_metrics_pool_read_failures",
            "Scrapes that could not read pool statistics from the store.",
            value=self._failures,
        )
        yield _gauge(
            "bots_metrics_collect_duration_seconds",
            "Time the last scrape spent reading the store.",
            time.perf_counter() - start,
        )

    def _epoch_metrics(self) -> Iterator[Metric]:
        epoch = getattr(self.store, "epoch", None)
        if not isinstance(epoch, str):
            return  # not a Redis store
        if epoch:
            if self._epoch is not None and epoch != self._epoch:
                self._epoch_changes += 1
            self._epoch = epoch
            info = GaugeMetricFamily(
                "bots_redis_epoch_info",
                "Always 1; the label is the Redis dataset's epoch id (it changes when Redis "
                "restarts without its data).",
                labels=["epoch"],
            )
            info.add_metric([epoch], 1.0)
            yield info
        yield CounterMetricFamily(
            "bots_redis_epoch_changes",
            "Times this replica saw the Redis epoch change (a Redis that lost its data).",
            value=self._epoch_changes,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def pool_metrics(pools: Iterable[PoolStats]) -> Iterator[Metric]:
    """The per-pool metric families for ``pools``; NaN statistics (not yet known) are omitted."""
    L = ["pool"]
    W = ["pool", "window"]
    tasks = GaugeMetricFamily("bots_pool_tasks", "Tasks in the pool.", labels=L)
    refs = GaugeMetricFamily(
        "bots_pool_tasks_with_references", "Tasks with weak/strong reference rates.", labels=L
    )
    steps = CounterMetricFamily("bots_pool_steps_applied", "BOTS steps applied.", labels=L)
    opened = CounterMetricFamily("bots_pool_selections_opened", "Selections drawn.", labels=L)
    expired = CounterMetricFamily(
        "bots_pool_selections_expired", "Selections closed by their wait window.", labels=L
    )
    open_now = GaugeMetricFamily("bots_pool_open_selections", "Selections still open.", labels=L)
    etr = GaugeMetricFamily(
        "bots_pool_effective_task_ratio",
        "Share of evaluated tasks with 0 < pass rate < 1; window=last (latest step) or "
        "rolling (mean of the last 100 steps).",
        labels=W,
    )
    above = GaugeMetricFamily(
        "bots_pool_pass_rate_above_zero_ratio",
        "Share of evaluated tasks with pass rate > 0 (window: last or rolling).",
        labels=W,
    )
    below = GaugeMetricFamily(
        "bots_pool_pass_rate_below_one_ratio",
        "Share of evaluated tasks with pass rate < 1 (window: last or rolling).",
        labels=W,
    )
    capability = GaugeMetricFamily(
        "bots_pool_capability", "The capability coefficient mu~ (EMA).", labels=L
    )
    hist = HistogramMetricFamily(
        "bots_pool_posterior_mean",
        "Distribution of the tasks' posterior means alpha / (alpha + beta).",
        labels=L,
    )
    pearson = GaugeMetricFamily(
        "bots_pool_estimator_pearson_correlation",
        "Pearson correlation of the implicit estimate p~ (made before a step) with the pass "
        "rate then observed, over the last 2048 evaluations of referenced tasks.",
        labels=L,
    )
    auc = GaugeMetricFamily(
        "bots_pool_estimator_roc_auc",
        "ROC AUC of p~ as a score for single rollouts passing, same window.",
        labels=L,
    )
    pairs = GaugeMetricFamily(
        "bots_pool_estimator_pairs", "(p~, pass rate) pairs behind the estimator metrics.", labels=L
    )
    R = ["pool", "run"]
    run_steps = CounterMetricFamily(
        "bots_pool_run_steps", "Steps of one run of the pool applied.", labels=R
    )
    run_capability = GaugeMetricFamily(
        "bots_pool_run_capability", "A run's own capability coefficient mu_r.", labels=R
    )
    run_etr = GaugeMetricFamily(
        "bots_pool_run_effective_task_ratio",
        "A run's effective task ratio over its last 100 steps.",
        labels=R,
    )
    run_active = GaugeMetricFamily(
        "bots_pool_runs_active", "Runs sharing the pool now (a step among the last 256).", labels=L
    )

    def put(family: GaugeMetricFamily, labels: list[str], value: float) -> None:
        if not math.isnan(value):
            family.add_metric(labels, value)

    for p in pools:
        n = [p.name]
        tasks.add_metric(n, p.task_count)
        refs.add_metric(n, p.tasks_with_references)
        steps.add_metric(n, p.steps_applied)
        opened.add_metric(n, p.selections_opened)
        expired.add_metric(n, p.selections_expired)
        open_now.add_metric(n, p.open_selections)
        put(etr, [p.name, "last"], p.last_effective_task_ratio)
        put(etr, [p.name, "rolling"], p.rolling_effective_task_ratio)
        put(above, [p.name, "last"], p.positive_ratio)
        put(above, [p.name, "rolling"], p.rolling_positive_ratio)
        put(below, [p.name, "last"], p.below_one_ratio)
        put(below, [p.name, "rolling"], p.rolling_below_one_ratio)
        put(capability, n, p.capability)
        put(pearson, n, p.estimator_pearson)
        put(auc, n, p.estimator_roc_auc)
        pairs.add_metric(n, p.estimator_pairs)
        run_active.add_metric(n, float(sum(r.active for r in p.runs)))
        for r in p.runs[:MAX_RUNS_PER_POOL]:
            labels = [p.name, r.run_id]
            run_steps.add_metric(labels, r.steps)
            put(run_capability, labels, r.capability)
            put(run_etr, labels, r.rolling_effective_task_ratio)
        if p.posterior_mean_counts:
            cumulative, buckets = 0, []
            for bound, count in zip(POSTERIOR_MEAN_BUCKETS, p.posterior_mean_counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            buckets.append(("+Inf", float(p.task_count)))
            total = 0.0 if math.isnan(p.mean_posterior) else p.mean_posterior * p.task_count
            hist.add_metric(n, buckets, total)
    yield from (tasks, refs, steps, opened, expired, open_now, etr, above, below, capability)
    yield from (hist, pearson, auc, pairs, run_steps, run_capability, run_etr, run_active)


def _le(bound: float) -> str:
    return repr(float(bound))

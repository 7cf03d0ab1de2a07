"""Metrics read back through a real Prometheus server scraping two replicas sharing Redis.

This is the docker-compose topology (Redis + 2 selector replicas + Prometheus) run
as local processes: deploy/prometheus.yml and deploy/alerts.yml are loaded with
the DNS discovery swapped for the replicas' loopback ports, and the Grafana
dashboard's queries are run against the result.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bots_client import ConflictError, NotFoundError, SelectorClient, Task
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from prometheus_client.parser import text_string_to_metric_families
from service_procs import RedisProcess, ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bots-selector.json"

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="the Debian package 'prometheus' is not installed (.ci/run installs it)",
)


class PrometheusProcess:
    """A real ``prometheus`` on a free loopback port with a generated config."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusProcess:
        cmd = [
            "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, expr: str, ok: Callable[[float | None], bool], timeout: float = 30
    ) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.value(expr)
            if ok(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} stayed at {got}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def scrape_config(metrics_targets: list[str], prometheus_port: int) -> dict[str, Any]:
    """deploy/prometheus.yml with fast intervals and static loopback targets."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        if job["job_name"] == "bots-selector":
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": metrics_targets}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        t["expr"].replace("$__rate_interval", "30s").replace("$pool", ".*")
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[PrometheusProcess, list[ServerProcess]]]:
    """Redis + 2 replicas (subprocesses of `bots serve`) + Prometheus scraping both."""
    redis = RedisProcess(tmp_path / "redis").start()
    metrics_ports = [free_port(), free_port()]
    replicas = [
        ServerProcess(
            tmp_path / f"replica{i}",
            free_port(),
            "--redis-url",
            redis.url,
            "--metrics-port",
            str(metrics_ports[i]),
            "--expiry-interval-seconds",
            "0.2",
        )
        for i in range(2)
    ]
    prom_port = free_port()
    prom = PrometheusProcess(
        tmp_path / "prometheus",
        scrape_config([f"127.0.0.1:{p}" for p in metrics_ports], prom_port),
    )
    prom.port = prom_port
    try:
        prom.start()  # starts while the replicas import
        for replica in replicas:
            replica.start()
        prom.wait_ready()
        yield prom, replicas
    finally:
        prom.stop()
        for replica in replicas:
            replica.stop()
        redis.stop()


@needs_prometheus
def test_prometheus_reads_selection_metrics_from_two_replicas(
    topology: tuple[PrometheusProcess, list[ServerProcess]],
) -> None:
    prom, replicas = topology
    target = "ipv4:" + ",".join(r.address for r in replicas)
    lb = [("grpc.lb_policy_name", "round_robin")]
    steps = 6
    prom.wait_for('count(up{job="bots-selector"} == 1)', lambda v: v == 2)
    with SelectorClient(target, options=lb, timeout=10) as client:
        client.create_pool(
            "p", [Task(f"t{i}", weak=0.05 * i, strong=0.4 + 0.05 * i) for i in range(12)]
        )
        for step in range(steps):
            sel = client.select_batch("p", 4, run_id="run", step=step)
            outcomes = {k: ((i + step) % 5, 4) for i, k in enumerate(sel.keys)}
            client.report_outcomes("p", outcomes, selection_id=sel.selection_id, final=True)
        client.report_outcomes("p", {"t0": (1, 2)}, request_id="standalone-1")
        client.report_outcomes("p", {"t0": (1, 2)}, request_id="standalone-1")  # a retry
        with pytest.raises(ConflictError):
            client.report_outcomes("p", {"t0": (2, 2)}, request_id="standalone-1")
        with pytest.raises(NotFoundError):
            client.get_pool("missing")
    for replica in replicas:  # both replicas serve, whatever the balancer picked
        with SelectorClient(replica.address, timeout=10) as direct:
            assert direct.get_pool("p").steps_applied == steps + 1

    done = time.time()
    # Both replicas scraped after the traffic: every value below is final.
    prom.wait_for('min(timestamp(up{job="bots-selector"}))', lambda v: v is not None and v > done)
    assert prom.value('count(up{job="bots-selector"} == 1)') == 2
    assert prom.value("sum(bots_selections_total)") == steps
    assert prom.value('sum(bots_reports_total{result="conflict"})') == 1
    assert prom.value('sum(bots_reports_total{result="accepted"})') == steps + 1
    assert prom.value('sum(bots_reports_total{result="duplicate"})') == 1
    assert prom.value("sum(bots_reported_outcomes_total)") == 4 * steps + 1
    assert prom.value('sum(bots_rpc_handled_total{method="GetPool", code="NOT_FOUND"})') == 1
    assert prom.value('sum(bots_rpc_handled_total{method="SelectBatch", code="OK"})') == steps
    assert prom.value('count(bots_rpc_handled_total{method="GetPool", code="OK"})') == 2
    # Pool statistics come from the shared Redis: both replicas export the same values.
    assert prom.value('min(bots_pool_steps_applied_total{pool="p"})') == steps + 1
    assert prom.value('max(bots_pool_steps_applied_total{pool="p"})') == steps + 1
    assert prom.value('min(bots_pool_selections_opened_total{pool="p"})') == steps
    assert prom.value('min(bots_pool_tasks{pool="p"})') == 12
    assert prom.value('count(bots_pool_tasks{pool="p"})') == 2
    assert prom.value('max(bots_pool_estimator_pairs{pool="p"})') > 0
    assert prom.value('count(bots_pool_estimator_roc_auc{pool="p"})') == 2
    etr = prom.value('max(bots_pool_effective_task_ratio{pool="p", window="rolling"})')
    assert etr is not None and 0 <= etr <= 1
    assert prom.value('max(bots_pool_posterior_mean_bucket{pool="p", le="+Inf"})') == 12
    assert prom.value("min(bots_store_up)") == 1
    assert prom.value("count(bots_redis_epoch_info)") == 2
    assert prom.value("count(count by (epoch) (bots_redis_epoch_info))") == 1
    p50 = prom.value(
        'histogram_quantile(0.5, sum by (le) (bots_rpc_duration_seconds_bucket{method="SelectBatch"}))'
    )
    assert p50 is not None and 0 < p50 < 30

    # Every dashboard query is valid PromQL and, but for errors that did not happen, has data.
    time.sleep(2)  # rate() needs two samples of the series that appeared with the traffic
    for expr in dashboard_queries():
        result = prom.query(expr)
        if "bots_store_errors_total" not in expr:
            assert result, f"dashboard query has no data: {expr}"

    # Every alerting rule loads and evaluates without error.
    deadline = time.monotonic() + 15
    while True:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        if rules and all(r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.2)
    assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
    assert len(rules) == len(
        yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    )
    assert not [r["name"] for r in rules if r["state"] == "firing"]


@needs_prometheus
def test_shipped_prometheus_config_and_alerts_pass_promtool() -> None:
    for args in (["check", "config", str(DEPLOY / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "alerts.yml")]):  # fmt: skip
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------- /metrics without Prometheus


@pytest.fixture(params=["embedded", "redis"])
def metrics_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    redis = RedisProcess(tmp_path / "redis").start() if request.param == "redis" else None
    running = start_server(
        ServerSettings(
            host="127.0.0.1", port=0, metrics_port=0, fsync=False,
            data_dir=str(tmp_path / "data"), redis_url=redis.url if redis else "",
            expiry_interval_seconds=0.05,
        )
    )  # fmt: skip
    yield running
    running.stop(grace=0)
    if redis is not None:
        redis.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_tracks_rpcs_and_pools(metrics_server: RunningServer) -> None:
    assert metrics_server.metrics_port is not None
    with SelectorClient(metrics_server.address, timeout=10) as client:
        client.create_pool("p", [Task(f"t{i}", weak=0.1, strong=0.9) for i in range(5)])
        for step in range(3):
            sel = client.select_batch("p", 2)
            client.report_outcomes(
                "p", {k: (step, 3) for k in sel.keys}, selection_id=sel.selection_id, final=True
            )
        with pytest.raises(NotFoundError):
            client.get_pool("nope")
    m = scrape(metrics_server.metrics_port)
    rpc = (("code", "NOT_FOUND"), ("method", "GetPool"), ("service", "bots.v1.TaskSelector"))
    assert m[("bots_rpc_handled_total", rpc)] == 1
    assert m[("bots_rpc_duration_seconds_count", rpc)] == 1
    assert m[("bots_selections_total", ())] == 3
    assert m[("bots_pool_steps_applied_total", (("pool", "p"),))] == 3
    assert m[("bots_pool_tasks", (("pool", "p"),))] == 5
    assert m[("bots_pool_posterior_mean_count", (("pool", "p"),))] == 5
    assert m[("bots_pool_effective_task_ratio", (("pool", "p"), ("window", "last")))] == 1.0
    assert m[("bots_pool_pass_rate_above_zero_ratio", (("pool", "p"), ("window", "last")))] == 1.0
    assert m[("bots_pool_estimator_pairs", (("pool", "p"),))] == 4  # steps 2 and 3, 2 tasks each
    assert m[("bots_store_up", ())] == 1
    assert m[("bots_store_operation_duration_seconds_count", (("operation", "select"),))] == 3
    assert not math.isnan(m[("bots_pool_capability", (("pool", "p"),))])
    assert m[("bots_rpc_in_flight", ())] == 0
    assert ("process_resident_memory_bytes", ()) in m


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    running = start_server(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=str(tmp_path / "d"))
    )
    try:
        assert running.metrics_port is None and running.metrics is None
    finally:
        running.stop(grace=0)


def test_a_taken_metrics_port_does_not_stop_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = start_server(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=0, data_dir=str(tmp_path / "a"))
    )
    try:
        assert first.metrics_port is not None
        second = start_server(
            ServerSettings(
                host="127.0.0.1", port=0, metrics_port=first.metrics_port,
                data_dir=str(tmp_path / "b"),
            )
        )  # fmt: skip
        try:
            assert second.metrics_port is None
            assert "serving without metrics" in caplog.text
            with SelectorClient(second.address, timeout=5) as client:
                assert client.list_pools() == []
        finally:
            second.stop(grace=0)
    finally:
        first.stop(grace=0)

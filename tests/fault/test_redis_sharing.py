"""Guarantees of the Redis store with real redis-server and server replica processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from bots_client import (
    BotsError,
    SelectorClient,
    UnavailableError,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_procs import RedisProcess, ServerProcess, free_port
from sharing_support import (
    assert_service_matches_replay,
    create_pool,
    start_workers,
    wait_workers,
)


def replicas(tmp_path: Path, redis_url: str, count: int) -> list[ServerProcess]:
    out = []
    for i in range(count):
        proc = ServerProcess(
            tmp_path / f"replica-{i}",
            free_port(),
            "--redis",  # the short spelling of --redis-url
            redis_url,
            "--expiry-interval-seconds",
            "0.2",
            "--redis-timeout-seconds",
            "1",
        )
        out.append(proc.start())
    return out


@pytest.fixture
def cluster_of_two(tmp_path: Path, redis_server: RedisProcess):
    procs = replicas(tmp_path, redis_server.url, 2)
    yield procs
    for p in procs:
        p.stop()


@pytest.mark.slow
def test_eight_trainers_on_two_replicas_equal_a_serial_replay(cluster_of_two, tmp_path):
    targets = [p.address for p in cluster_of_two]
    create_pool(targets[0], "shared")
    procs = start_workers(targets, "shared", workers=8, steps=200, out_dir=tmp_path)
    records = wait_workers(procs, timeout=600)
    assert len(records) == 8 * 200
    assert_service_matches_replay(targets[1], "shared", records)


def test_a_select_after_a_report_on_another_replica_sees_it(cluster_of_two):
    a, b = (p.address for p in cluster_of_two)
    create_pool(a, "p")
    with SelectorClient(a) as ca, SelectorClient(b) as cb:
        for step in range(20):
            sel = ca.select_batch("p", 4, run_id="r", step=step)
            ack = cb.report_outcomes(
                "p", [(k, 3, 16) for k in sel.keys], selection_id=sel.selection_id
            )
            # The next draw on the other replica uses the posterior this report produced.
            nxt = ca.select_batch("p", 4, run_id="r", step=step + 100)
            assert nxt.posterior_version == ack.posterior_version
            assert cb.get_pool("p").steps_applied == ack.posterior_version


@pytest.mark.slow
def test_killing_a_replica_under_load_loses_and_duplicates_nothing(cluster_of_two, tmp_path):
    targets = [p.address for p in cluster_of_two]
    create_pool(targets[0], "shared")
    procs = start_workers(targets, "shared", workers=4, steps=80, out_dir=tmp_path, lb=True)
    time.sleep(3)
    cluster_of_two[0].kill()
    records = wait_workers(procs, timeout=600)
    assert len(records) == 4 * 80
    assert_service_matches_replay(targets[1], "shared", records)


def health_status(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        )


def wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_redis_crash_with_aof_keeps_every_acknowledged_report(tmp_path):
    redis_proc = RedisProcess(tmp_path / "redis", aof=True).start()
    (replica,) = replicas(tmp_path, redis_proc.url, 1)
    try:
        create_pool(replica.address, "p")
        acked: list[int] = []
        stop = threading.Event()
        client = SelectorClient(replica.address, timeout=3, retries=2)

        def send(i: int):
            return client.report_outcomes(
                "p",
                [(f"task-{(i * 7 + j) % 300}", float((i + j) % 9), 8.0) for j in range(3)],
                request_id=f"r{i}",
            )

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    send(i)
                except BotsError:
                    return
                acked.append(i)
                i += 1

        worker = threading.Thread(target=load)
        worker.start()
        wait_for(lambda: len(acked) >= 50)
        redis_proc.kill()
        worker.join(timeout=30)
        stop.set()
        # With Redis down: UNAVAILABLE within the deadline, never a hang; health goes NOT_SERVING.
        t0 = time.monotonic()
        with pytest.raises(UnavailableError):
            client.get_pool("p", timeout=3)
        assert time.monotonic() - t0 < 3 * 3 + 2
        wait_for(
            lambda: health_status(replica.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        redis_proc.start()
        wait_for(lambda: health_status(replica.address) == health_pb2.HealthCheckResponse.SERVING)
        in_flight = len(acked)
        for i in acked:
            assert send(i).duplicate, f"acknowledged report {i} was lost"
        send(in_flight)
        assert client.get_pool("p").steps_applied == in_flight + 1
        client.close()
    finally:
        replica.stop()
        redis_proc.stop()


def test_a_redis_restarted_empty_is_detected_not_served_as_fresh(tmp_path, redis_server):
    (replica,) = replicas(tmp_path, redis_server.url, 1)
    try:
        create_pool(replica.address, "p")
        with SelectorClient(replica.address, timeout=5) as client:
            client.report_outcomes("p", [("task-1", 3, 4)])
            redis_server.kill()
            redis_server.start()  # no persistence: comes back empty
            with pytest.raises(BotsError) as info:
                client.get_pool("p")
            assert info.value.code == grpc.StatusCode.DATA_LOSS
            assert "reset" in info.value.details
            with pytest.raises(BotsError) as info:
                client.select_batch("p", 2)
            assert info.value.code == grpc.StatusCode.DATA_LOSS
            # Re-creating the pool is the way back.
            create_pool(replica.address, "p")
            assert client.get_pool("p").steps_applied == 0
    finally:
        replica.stop()

"""Connections between the replicas and Redis are cut mid-request: no partial writes, retries converge."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from service_procs import RedisProcess, ServerProcess, free_port
from sharing_support import assert_service_matches_replay, create_pool, start_workers, wait_workers
from tcp_proxy import TcpProxy


@pytest.mark.slow
def test_dropped_redis_connections_neither_lose_nor_duplicate_steps(
    tmp_path: Path, redis_server: RedisProcess
):
    proxy = TcpProxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    servers = [
        ServerProcess(
            tmp_path / f"r{i}", free_port(), "--redis-url", url, "--redis-timeout-seconds", "1"
        ).start()
        for i in range(2)
    ]
    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(0.15):
            proxy.drop_all()

    try:
        targets = [s.address for s in servers]
        create_pool(targets[0], "flaky")
        cutter = threading.Thread(target=chaos)
        cutter.start()
        procs = start_workers(targets, "flaky", workers=4, steps=60, out_dir=tmp_path)
        records = wait_workers(procs, timeout=600)
        stop.set()
        cutter.join()
        assert proxy.drops > 10
        assert len(records) == 4 * 60
        assert_service_matches_replay(targets[0], "flaky", records)
    finally:
        stop.set()
        for s in servers:
            s.stop()
        proxy.close()

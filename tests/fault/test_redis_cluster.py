"""The Redis store on a local 3-master Redis Cluster: pools spread over shards and still share exactly."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from bots_server import _redis_keys as rk
from redis.cluster import RedisCluster
from service_procs import RedisProcess, ServerProcess, free_port
from sharing_support import assert_service_matches_replay, create_pool, start_workers, wait_workers


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) exists and is free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def redis_cluster(tmp_path: Path):
    nodes = [
        RedisProcess(
            tmp_path / f"node-{i}",
            port=cluster_port(),
            extra=(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{i}.conf",
                "--cluster-node-timeout",
                "2000",
            ),
        )
        for i in range(3)
    ]
    for n in nodes:
        n.start()
    try:
        addrs = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addrs,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            states = [redis.Redis(port=n.port).cluster("info").get("cluster_state") for n in nodes]
            if all(s == "ok" for s in states):
                break
            assert time.monotonic() < deadline, f"cluster did not form: {states}"
            time.sleep(0.2)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
def test_pools_spread_over_shards_and_share_exactly(redis_cluster, tmp_path):
    url = redis_cluster[0].url
    servers = [
        ServerProcess(
            tmp_path / f"r{i}", free_port(), "--redis-url", url, "--redis-cluster"
        ).start()
        for i in range(2)
    ]
    try:
        targets = [s.address for s in servers]
        names = [f"pool-{i}" for i in range(6)]
        for name in names:
            create_pool(targets[0], name)
        rc = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
        owners = set()
        for name in names:
            node = rc.get_node_from_key(rk.meta(name))
            owners.add(node.port)
            # Every key of the pool lives on the meta key's node (one hash slot).
            inc = rc.hget(rk.meta(name), "incarnation").decode()
            keys = rk.PoolKeys(name, inc)
            for key in (keys.ckpt, keys.log, keys.tasks(0)):
                assert rc.keyslot(key) == rc.keyslot(rk.meta(name))
        assert len(owners) >= 2, "pools did not spread over the shards"
        rc.close()
        procs = start_workers(targets, "pool-3", workers=4, steps=50, out_dir=tmp_path)
        records = wait_workers(procs, timeout=600)
        assert len(records) == 200
        assert_service_matches_replay(targets[1], "pool-3", records)
    finally:
        for s in servers:
            s.stop()

"""Writes that carry a whole pool take longer than a request's Redis timeout: they still succeed once.

At 10M tasks the create script (every task chunk and the first checkpoint in
one call) runs for seconds. Before, it ran under the 2 s request timeout:
redis-py timed out waiting for a reply that was coming, retried, and the retry
found the pool the first try had written, so an import of a new pool answered
"already exists".
"""

from __future__ import annotations

import numpy as np
import pytest
import redis
from bots_core import PoolConfig, PoolState
from bots_server._errors import AlreadyExists
from bots_server._redis_store import RedisStore
from bots_server._store import PoolDump
from service_procs import RedisProcess
from tcp_proxy import TcpProxy

N = 400_000


def _pool(name: str, n: int = N) -> PoolDump:
    rng = np.random.default_rng(3)
    weak = rng.uniform(0.0, 0.5, n)
    ones = np.ones(n)
    state = PoolState.from_columns(
        name, PoolConfig(), [f"t{i}" for i in range(n)], weak, weak + 0.3, ones, ones
    )
    return PoolDump.of_state(state, 0)


def _script_calls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


def _check(url: str, name: str, n: int = N) -> None:
    fresh = RedisStore(url)  # a replica that loads the pool from what Redis holds
    try:
        assert fresh.get_pool(name).task_count == n
        assert len(fresh.select(name, 16, "", 0, 0.0).keys) == 16
    finally:
        fresh.close()


@pytest.mark.slow
def test_an_import_slower_than_the_request_timeout_is_written_once(
    redis_server: RedisProcess,
) -> None:
    store = RedisStore(redis_server.url, timeout=0.005)
    try:
        store.import_pool(_pool("small", 10))  # loads the script into Redis's cache
        before = _script_calls(redis_server.url)
        store.import_pool(_pool("big"))
        assert _script_calls(redis_server.url) - before == 1  # no retry
    finally:
        store.close()
    _check(redis_server.url, "big")


def test_a_create_whose_reply_is_lost_is_retried_and_finds_its_own_pool(
    redis_server: RedisProcess,
) -> None:
    proxy = TcpProxy(redis_server.port)
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        store.import_pool(_pool("small", 10))  # loads the script into Redis's cache
        proxy.lose_next_reply(over=500_000)
        store.import_pool(_pool("big", 50_000))  # about 2 MB in one script call
        assert proxy.replies_lost == 1  # the first try wrote the pool; redis-py retried
    finally:
        store.close()
        proxy.close()
    _check(redis_server.url, "big", 50_000)
    other = RedisStore(redis_server.url)
    try:
        with pytest.raises(AlreadyExists):
            other.import_pool(_pool("big", 50_000))  # a pool of that name that is not its own
    finally:
        other.close()

"""The Redis store: stateless replicas sharing pools through Redis.

Redis holds, per pool, the pool's ordered record log (a stream whose entry
``<seq>-0`` is record ``seq``), a checkpoint image of the pool runtime at some
record, and the task table in immutable compressed chunks. Every replica runs
the same pool runtime (``bots_server._pool``) as the embedded store: before a
request it reads the log tail it has not applied yet, plans the request, and
appends the record with a compare-and-set on the sequence number; when another
replica appended first, it reads the new records and plans again. The log is
the one total order of changes that every replica agrees on.

Lua holds only what must be atomic: append-if-the-sequence-matches (with the
task chunks an AddTasks record brings), create-whole-pool, checkpoint-and-trim
and delete. Every key a script touches is passed in KEYS, so the scripts run
on a Redis Cluster. See docs/redis.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.cluster
from bots_core import InvalidInputError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bots_server import _redis_keys as rk
from bots_server._columns import Columns
from bots_server._errors import DataLoss, NotFound, ResourceExhausted, StoreUnavailable, short
from bots_server._logstore import Conflict, LogStore, PoolHandle
from bots_server._memory import release_free_memory
from bots_server._pool import PoolRuntime, Retention
from bots_server._records import AddTasks, Record, decode, encode
from bots_server._snapshot import CorruptImage, capture
from bots_server._snapshot import decode as decode_image
from bots_server._snapshot import encode as encode_image

log = logging.getLogger(__name__)

T = TypeVar("T")
_LUA = Path(__file__).with_name("lua")
_SCRIPTS = ("create", "append", "checkpoint", "delete")
# Socket timeout of the calls that carry a pool's tasks or a checkpoint (seconds).
BULK_TIMEOUT = 300.0


def _redis_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Maps Redis failures to StoreUnavailable / ResourceExhausted."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise StoreUnavailable(f"the Redis store is unreachable: {type(exc).__name__}") from exc
        except redis.ResponseError as exc:
            if str(exc).startswith("OOM"):
                raise ResourceExhausted("the Redis store is out of memory") from exc
            if str(exc).startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")):
                raise StoreUnavailable(f"the Redis store is not ready: {exc}") from exc
            raise

    return wrapper


class _Replica(PoolHandle):
    """This replica's copy of one pool incarnation."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.keys: rk.PoolKeys | None = None
        self.ckpt_seq = 0


def _entry(entry: Any) -> tuple[int, Record]:
    """(seq, record) of a log stream entry, as XRANGE (or a script) returns it."""
    entry_id, fields = entry
    if isinstance(fields, dict):
        return int(entry_id.split(b"-")[0]), decode(fields[b"r"])
    return int(entry_id.split(b"-")[0]), decode(fields[1])  # [b"r", record] from a script


class RedisStore(LogStore):
    """Pools in Redis (or a Redis Cluster), shared by any number of replicas."""

    optimistic = True

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        timeout: float = 2.0,
        checkpoint_every: int = 256,
        retention: Retention | None = None,
        max_tasks_per_pool: int = 50_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            retention=retention or Retention(), max_tasks_per_pool=max_tasks_per_pool, clock=clock
        )
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": retry,
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        }
        # Scripts that carry a whole pool (create), task chunks (AddTasks) or a
        # checkpoint image can take seconds at 10M tasks: they use a client whose
        # timeout fits them, so that a slow but successful call is not retried.
        bulk = {**common, "socket_timeout": max(timeout, BULK_TIMEOUT)}
        self.r: Any
        self._bulk: Any
        if cluster:
            self.r = redis.cluster.RedisCluster.from_url(url, **common)
            self._bulk = redis.cluster.RedisCluster.from_url(url, **bulk)
        else:
            self.r = redis.Redis.from_url(url, health_check_interval=5, **common)
            self._bulk = redis.Redis.from_url(url, health_check_interval=5, **bulk)
        self.checkpoint_every = max(1, checkpoint_every)
        self._scripts = {
            name: self.r.register_script((_LUA / f"{name}.lua").read_text()) for name in _SCRIPTS
        }
        self._cache: dict[str, _Replica] = {}
        self._cache_lock = threading.Lock()
        self._lost: set[str] = set()
        self.epoch = ""
        try:
            self._check_epoch()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("Redis is not reachable yet (%s); will keep trying", exc)

    # ---------------------------------------------------------------- epoch
    def _check_epoch(self) -> bool:
        """Detects a Redis that lost its data; returns False when it just did."""
        self.r.set(rk.EPOCH, uuid.uuid4().hex, nx=True)
        current = self.r.get(rk.EPOCH).decode()
        if not self.epoch or current == self.epoch:
            self.epoch = current
            return True
        with self._cache_lock:
            lost = {n for n, h in self._cache.items() if h.runtime is not None}
            self._cache.clear()
        self._lost |= lost
        log.error(
            "Redis epoch changed from %s to %s: the store was reset and lost its data; "
            "pools %s are gone",
            self.epoch, current, sorted(lost) or "(none cached)",
        )  # fmt: skip
        self.epoch = current
        return False

    def _gone(self, name: str) -> Exception:
        """The error for a pool whose meta hash is missing (and forgets the pool)."""
        with self._cache_lock:
            h = self._cache.pop(name, None)
        had = h is not None and h.runtime is not None
        if had or name in self._lost:
            if not self._check_epoch() and had:
                self._lost.add(name)
            if name in self._lost:
                return DataLoss(
                    f"pool {short(name)} was lost: the Redis store was reset (its epoch changed). "
                    "Re-create or re-import it."
                )
        return NotFound(f"pool {short(name)} not found")

    # ----------------------------------------------------------------- hooks
    def _handle(self, name: str) -> PoolHandle:
        with self._cache_lock:
            h = self._cache.get(name)
            if h is None:
                h = self._cache[name] = _Replica(name)
        return h

    @_redis_errors
    def _sync(self, h: PoolHandle) -> PoolRuntime:
        assert isinstance(h, _Replica)
        for _ in range(5):
            rt = h.runtime
            pipe = self.r.pipeline(transaction=False)
            pipe.hmget(rk.meta(h.name), "incarnation", "seq", "ckpt_seq", "task_count")
            if rt is not None and h.keys is not None:
                pipe.xrange(h.keys.log, min=f"{rt.seq + 1}-0")
            replies = pipe.execute()
            inc_b, head_b, ckpt_b, count_b = replies[0]
            if inc_b is None:
                raise self._gone(h.name)
            inc = inc_b.decode()
            head = int(head_b)
            h.ckpt_seq = int(ckpt_b)
            if rt is None or rt.incarnation != inc:
                h.keys = rk.PoolKeys(h.name, inc)
                h.runtime = rt = self._load(h.keys, int(count_b))
                if rt is None:
                    continue  # deleted (or re-created) while loading: look again
                self._lost.discard(h.name)
                entries = self.r.xrange(h.keys.log, min=f"{rt.seq + 1}-0") if rt.seq < head else []
            else:
                entries = replies[1]
            for entry in entries:
                seq, record = _entry(entry)
                if seq != rt.seq + 1:
                    break  # trimmed past this replica: load the checkpoint again
                rt.apply(seq, record)
            if rt.seq >= head:
                return rt
            h.runtime = None
        raise StoreUnavailable(f"pool {short(h.name)} keeps moving under this replica; retry")

    def _load(self, keys: rk.PoolKeys, task_count: int) -> PoolRuntime | None:
        """The runtime from the pool's checkpoint and task chunks (None if they vanished).

        Chunks are decompressed on two threads (zlib releases the GIL) and
        joined with one copy; the key index is built later, on first use.
        """
        names = keys.chunks(task_count)
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.ckpt, "image")
        for name in names:
            pipe.get(name)
        image, *blobs = pipe.execute()
        if image is None or any(b is None for b in blobs):
            return None
        try:
            if len(blobs) > 1:
                with ThreadPoolExecutor(2, thread_name_prefix="bots-load") as ex:
                    parts = list(ex.map(Columns.decode, blobs))
            else:
                parts = [Columns.decode(b) for b in blobs]
            runtime = decode_image(image, self.retention, Columns.join(parts))
        except (CorruptImage, InvalidInputError, zlib.error) as exc:
            raise DataLoss(
                f"pool {short(keys.pool)}: its checkpoint in Redis is damaged: {exc}"
            ) from exc
        del image, blobs, parts
        release_free_memory()  # the replies and chunks were as big as the pool's arrays
        return runtime

    @_redis_errors
    def _append(self, h: PoolHandle, record: Record) -> int:
        assert isinstance(h, _Replica) and h.keys is not None and h.runtime is not None
        rt, keys = h.runtime, h.keys
        chunk_keys: list[str] = []
        blobs: list[bytes] = []
        count = rt.tasks.task_count
        if isinstance(record, AddTasks):
            st, first = rt.tasks, count // rk.TASK_CHUNK
            lo = first * rk.TASK_CHUNK
            merged = Columns.of_state(st, lo, count).concat(record.tasks)
            for j in range(0, len(merged), rk.TASK_CHUNK):
                chunk_keys.append(keys.tasks(first + j // rk.TASK_CHUNK))
                blobs.append(merged.slice(j, j + rk.TASK_CHUNK).encode())
            count += len(record.tasks)
        deadline = rt.deadline_after(record)
        reply = self._scripts["append"](
            keys=[keys.meta, keys.log, *chunk_keys],
            args=[
                keys.incarnation, rt.seq, encode(record),
                "inf" if math.isinf(deadline) else repr(deadline), count, *blobs,
            ],
            client=self._bulk if blobs else self.r,
        )  # fmt: skip
        if reply[0] == b"err":
            if reply[1] == b"gone":
                h.deleted = True
                raise self._gone(h.name)
            raise Conflict(int(reply[2]), [_entry(e) for e in reply[3]])
        h.ckpt_seq = int(reply[2])  # the pool's checkpoint as this append found it
        return int(reply[1])

    def _after_apply(self, h: PoolHandle) -> Callable[[], None] | None:
        # One writer per interval across replicas: the one that appended the
        # record that completes it (if its write fails, the next interval's).
        assert isinstance(h, _Replica) and h.runtime is not None
        every = self.checkpoint_every
        gap = h.runtime.seq - h.ckpt_seq
        return self._checkpoint(h) if gap >= every and gap % every == 0 else None

    def _after_read(self, h: PoolHandle) -> Callable[[], None] | None:
        # A read (which applied what was pending) writes one when an interval has
        # passed without a checkpoint: a replica that only reads, or a lost write.
        assert isinstance(h, _Replica) and h.runtime is not None
        gap = h.runtime.seq - h.ckpt_seq
        return self._checkpoint(h) if gap >= self.checkpoint_every else None

    def _checkpoint(self, h: _Replica) -> Callable[[], None]:
        assert h.runtime is not None and h.keys is not None
        image = capture(h.runtime, with_tasks=False)
        h.ckpt_seq = image.seq  # one writer per interval on this replica
        keys = h.keys

        def write() -> None:
            try:
                self._scripts["checkpoint"](
                    keys=[keys.meta, keys.ckpt, keys.log],
                    args=[keys.incarnation, image.seq, encode_image(image)],
                    client=self._bulk,
                )
            except redis.RedisError as exc:  # the log still holds everything
                log.warning("checkpoint of %s failed: %s", keys.pool, exc)

        return write

    @_redis_errors
    def _install(self, runtime: PoolRuntime) -> bool:
        st = runtime.tasks
        keys = rk.PoolKeys(runtime.name, runtime.incarnation)
        n = st.task_count
        cols = Columns.of_state(st)
        blobs = [cols.slice(lo, lo + rk.TASK_CHUNK).encode() for lo in range(0, n, rk.TASK_CHUNK)]
        reply = self._scripts["create"](
            keys=[keys.meta, keys.ckpt, *keys.chunks(n)],
            args=[
                keys.incarnation, json.dumps(st.config.to_dict(), sort_keys=True), n,
                encode_image(capture(runtime, with_tasks=False)), *blobs,
            ],
            client=self._bulk,
        )  # fmt: skip
        # An incarnation of our own means that an earlier try of this very call
        # wrote the pool and its reply was lost: the pool is ours.
        if reply[0] == b"existing" and reply[1] != keys.incarnation.encode():
            return False
        h = _Replica(runtime.name)
        h.keys, h.runtime = keys, runtime
        with self._cache_lock:
            self._cache[runtime.name] = h
            self._lost.discard(runtime.name)
        return True

    @_redis_errors
    def _remove(self, name: str) -> None:
        for _ in range(20):
            inc, count = self.r.hmget(rk.meta(name), "incarnation", "task_count")
            if inc is None:
                raise self._gone(name)
            keys = rk.PoolKeys(name, inc.decode())
            reply = self._scripts["delete"](
                keys=[keys.meta, keys.ckpt, keys.log, *keys.chunks(int(count))],
                args=[keys.incarnation, int(count)],
            )
            if reply[0] == b"ok":
                with self._cache_lock:
                    h = self._cache.pop(name, None)
                if h is not None:
                    h.deleted = True
                return
        raise StoreUnavailable(f"pool {short(name)} keeps growing while being deleted; retry")

    @_redis_errors
    def _names(self) -> list[str]:
        return [
            rk.pool_of_meta(k.decode()) for k in self.r.scan_iter(match=rk.META_PATTERN, count=1000)
        ]

    @_redis_errors
    def _due(self, now: float) -> list[str]:
        names = self._names()
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(rk.meta(name), "deadline")
        return [n for n, d in zip(names, pipe.execute()) if d is not None and float(d) <= now]

    # -------------------------------------------------------------- lifecycle
    def healthy(self) -> bool:
        try:
            self.r.ping()
            self._check_epoch()
            return True
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self._stop_applier()
        with contextlib.suppress(redis.RedisError):
            self.r.close()
        with contextlib.suppress(redis.RedisError):
            self._bulk.close()

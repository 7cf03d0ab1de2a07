"""The Redis store: stateless replicas sharing pools through Redis.

Redis holds, per pool, an immutable task table (compressed chunks), a
checkpoint of the posteriors, and an append-only *log* of steps (stream
entries numbered 1, 2, 3, ...). Scripts make every change atomic: a report is
deduplicated and accumulated, and when it closes a selection the selection's
evidence becomes the next log entry, all in one script. The log is the one
total order of steps that every replica agrees on.

A replica keeps a cache of each pool: the checkpoint plus every log entry
applied with the engine. Before a read that needs posteriors (SelectBatch,
GetPool, ExportPosteriors) it reads the log tail from Redis, so it never draws
from a posterior older than the last acknowledged report on any replica.
Replicas write checkpoints every ``checkpoint_every`` entries (compare-and-set
on the log position) and trim the log behind them. See docs/redis.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis
import redis.cluster
from bots_core import (
    Diagnostics,
    Evidence,
    PoolConfig,
    PoolState,
    TaskConflictError,
    TaskSpec,
    aggregate,
    apply_step,
    select_batch,
)
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bots_server import _redis_keys as rk
from bots_server._columns import Columns, columns_of
from bots_server._errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    StoreUnavailable,
)
from bots_server._model import (
    OutcomeIn,
    PoolStats,
    ReportAck,
    SelectionState,
    SelectionView,
    engine_stats,
)
from bots_server._pool import (
    check_pool_name,
    check_report_args,
    check_select_args,
    parse_selection_id,
    payload_digest,
)
from bots_server._store import PoolDump, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
_LUA = Path(__file__).with_name("lua")
_STATES = {
    b"none": SelectionState.NONE,
    b"open": SelectionState.OPEN,
    b"applied": SelectionState.APPLIED,
    b"discarded": SelectionState.DISCARDED,
}
_ENTRY = np.dtype([("i", "<u4"), ("s", "<f8"), ("t", "<f8")])


def _script_source(name: str) -> str:
    return (_LUA / "_common.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()


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


class _Replica:
    """This replica's cache of one pool incarnation."""

    def __init__(self, keys: rk.PoolKeys, config: PoolConfig) -> None:
        self.keys = keys
        self.config = config
        self.state = PoolState(keys.pool, config)
        self.seq = 0
        self.columns = Columns.empty()
        self.task_index: dict[str, int] = {}
        self.lock = threading.Lock()
        self.loaded = False

    def add_columns(self, cols: Columns) -> None:
        n0 = len(self.columns)
        for j, key in enumerate(cols.keys):
            self.task_index[key] = n0 + j
        self.columns = self.columns.concat(cols)


class RedisStore(Store):
    """Pools in Redis (or a Redis Cluster), shared by any number of replicas."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        timeout: float = 2.0,
        checkpoint_every: int = 64,
        dedup_ttl: int = 7 * 86400,
        selection_retention: int = 86400,
        max_tasks_per_pool: int = 50_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": retry,
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        }
        self.r: Any
        if cluster:
            self.r = redis.cluster.RedisCluster.from_url(url, **common)
        else:
            self.r = redis.Redis.from_url(url, health_check_interval=5, **common)
        self.checkpoint_every = max(1, checkpoint_every)
        self.dedup_ttl = dedup_ttl
        self.retention = selection_retention
        self.max_tasks = max_tasks_per_pool
        self.clock = clock
        self._scripts = {
            name: self.r.register_script(_script_source(name))
            for name in (
                "create_pool",
                "add_tasks",
                "select_begin",
                "select_commit",
                "report",
                "expire",
                "checkpoint",
                "delete_pool",
                "import_pool",
            )
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
        fresh = uuid.uuid4().hex
        self.r.set(rk.EPOCH, fresh, nx=True)
        current = self.r.get(rk.EPOCH).decode()
        if not self.epoch:
            self.epoch = current
            return True
        if current == self.epoch:
            return True
        with self._cache_lock:
            lost = set(self._cache)
            self._cache.clear()
        self._lost |= lost
        log.error(
            "Redis epoch changed from %s to %s: the store was reset and lost its data; "
            "pools %s are gone",
            self.epoch,
            current,
            sorted(lost) or "(none cached)",
        )
        self.epoch = current
        return False

    # -------------------------------------------------------------- scripts
    def _run(self, name: str, keys: rk.PoolKeys, *args: Any) -> list[Any]:
        reply: list[Any] = self._scripts[name](
            keys=[keys.meta], args=[keys.incarnation, keys.prefix, *args]
        )
        if reply[0] == b"err":
            kind, msg = reply[1].decode(), reply[2].decode()
            if kind in ("gone", "stale"):
                self._forget(keys.pool)
                raise _Stale(keys.pool)
            raise _ScriptError(kind, msg)
        return reply

    def _forget(self, pool: str) -> None:
        with self._cache_lock:
            self._cache.pop(pool, None)

    # ------------------------------------------------------------- syncing
    def _meta(self, pool: str) -> dict[bytes, bytes]:
        meta: dict[bytes, bytes] = self.r.hgetall(rk.meta(pool))
        if not meta:
            with self._cache_lock:
                known = pool in self._cache or pool in self._lost
            if known and (not self._check_epoch() or pool in self._lost):
                raise DataLoss(
                    f"pool {pool!r} was lost: the Redis store was reset (its epoch changed). "
                    "Re-create or re-import it."
                )
            self._forget(pool)
            raise NotFound(f"pool {pool!r} not found")
        return meta

    def _replica(self, pool: str, meta: dict[bytes, bytes]) -> _Replica:
        inc = meta[b"incarnation"].decode()
        with self._cache_lock:
            rep = self._cache.get(pool)
            if rep is None or rep.keys.incarnation != inc:
                config = PoolConfig.from_dict(json.loads(meta[b"config"]))
                rep = _Replica(rk.PoolKeys(pool, inc), config)
                self._cache[pool] = rep
                self._lost.discard(pool)
        return rep

    @contextlib.contextmanager
    def _synced(self, pool: str, *, posteriors: bool) -> Iterator[_Replica]:
        """The pool's cache, locked, with its task table (and posteriors) up to date."""
        for _ in range(3):
            meta = self._meta(pool)
            rep = self._replica(pool, meta)
            with rep.lock:
                try:
                    self._load_columns(rep, int(meta[b"task_count"]))
                    if posteriors:
                        self._catch_up(rep, meta)
                except _Stale:
                    continue
                yield rep
                return
        raise StoreUnavailable(f"pool {pool!r} keeps changing under this replica; retry")

    def _load_columns(self, rep: _Replica, count: int) -> None:
        have = len(rep.columns)
        if have >= count:
            return
        chunk = rk.TASK_CHUNK
        first = have // chunk
        names = [rep.keys.tasks(c) for c in range(first, (count + chunk - 1) // chunk)]
        blobs = self.r.mget(names) if len(names) > 1 else [self.r.get(names[0])]
        cols = Columns.empty()
        for blob in blobs:
            if blob is None:
                raise _Stale(rep.keys.pool)
            cols = cols.concat(Columns.decode(blob))
        rep.add_columns(cols.slice(have - first * chunk, count - first * chunk))

    def _load_checkpoint(self, rep: _Replica) -> None:
        ck = self.r.hgetall(rep.keys.ckpt)
        if not ck:
            raise _Stale(rep.keys.pool)
        info = json.loads(ck[b"state"])
        n = int(info.get("n", 0))
        state = PoolState(rep.keys.pool, rep.config)
        if n:
            self._load_columns(rep, n)
            c = rep.columns.slice(0, n)
            state.extend_columns(c.keys, c.weak, c.strong, c.prior_alpha, c.prior_beta)
            state.alpha = np.frombuffer(ck[b"alpha"], dtype="<f8").astype(np.float64)
            state.beta = np.frombuffer(ck[b"beta"], dtype="<f8").astype(np.float64)
        cap = info.get("capability")
        state.capability = math.nan if cap is None else float(cap)
        state.steps_applied = int(info.get("steps", 0))
        state.recent_etr.extend(info.get("recent_etr", []))
        state.diagnostics = Diagnostics.from_json(info.get("diagnostics"))
        rep.state = state
        rep.seq = int(ck[b"seq"])
        rep.loaded = True

    def _catch_up(self, rep: _Replica, meta: dict[bytes, bytes]) -> None:
        """Applies the log entries this replica has not seen yet."""
        if not rep.loaded:
            self._load_checkpoint(rep)
        target = int(meta[b"seq"])
        entries = self.r.xrange(rep.keys.log, min=f"{rep.seq + 1}-0") if target > rep.seq else []
        if target > rep.seq and (not entries or _seq_of(entries[0][0]) != rep.seq + 1):
            self._load_checkpoint(rep)  # the log was trimmed past our position
            entries = self.r.xrange(rep.keys.log, min=f"{rep.seq + 1}-0")
        for entry_id, fields in entries:
            seq = _seq_of(entry_id)
            if seq != rep.seq + 1:
                raise StoreUnavailable("the pool's log has a gap; retry")
            self._apply_entry(rep, fields[b"k"], fields[b"p"])
            rep.seq = seq
        if rep.seq - int(meta[b"ckpt_seq"]) >= self.checkpoint_every:
            self._checkpoint(rep)

    def _apply_entry(self, rep: _Replica, kind: bytes, payload: bytes) -> None:
        st = rep.state
        if kind == b"add":
            (count,) = struct.unpack("<Q", payload)
            self._load_columns(rep, count)
            c = rep.columns.slice(st.task_count, count)
            st.extend_columns(c.keys, c.weak, c.strong, c.prior_alpha, c.prior_beta)
        elif kind == b"step":
            ev = np.frombuffer(payload, dtype=_ENTRY)
            apply_step(
                st,
                Evidence(
                    ev["i"].astype(np.int64), ev["s"].astype(np.float64), ev["t"].astype(np.float64)
                ),
            )
        else:
            raise StoreUnavailable(f"unknown log entry kind {kind!r}")

    def _checkpoint(self, rep: _Replica) -> None:
        st = rep.state
        info = {
            "n": st.task_count,
            "capability": None if math.isnan(st.capability) else st.capability,
            "steps": st.steps_applied,
            "recent_etr": list(st.recent_etr),
            "diagnostics": st.diagnostics.to_json(),
        }
        self._run(
            "checkpoint",
            rep.keys,
            rep.seq,
            st.alpha.astype("<f8").tobytes(),
            st.beta.astype("<f8").tobytes(),
            json.dumps(info),
        )

    # ------------------------------------------------------------ interface
    @_redis_errors
    def create_pool(
        self, name: str, config: PoolConfig, tasks: Sequence[TaskSpec]
    ) -> tuple[PoolStats, bool, int]:
        check_pool_name(name)
        probe = PoolState(name, config)
        fresh = probe.plan_add(tasks)  # validates the tasks before anything is written
        if len(fresh) > self.max_tasks:
            raise ResourceExhausted(
                f"pool {name!r} would hold {len(fresh)} tasks; the limit is {self.max_tasks}"
            )
        inc = uuid.uuid4().hex[:12]
        keys = rk.PoolKeys(name, inc)
        cfg_json = json.dumps(config.to_dict(), sort_keys=True)
        reply = self._run("create_pool", keys, cfg_json, self.clock())
        created = reply[0] == b"ok" or reply[1].decode() == inc
        if not created:
            if json.loads(reply[2]) != json.loads(cfg_json):
                raise AlreadyExists(f"pool {name!r} already exists with a different config")
        else:
            self.r.sadd(rk.POOLS, name)
        added, _ = self.add_tasks(name, fresh) if fresh else (0, 0)
        return self.get_pool(name), created, added

    @_redis_errors
    def add_tasks(self, name: str, tasks: Sequence[TaskSpec]) -> tuple[int, int]:
        for _ in range(20):
            with self._synced(name, posteriors=False) as rep:
                fresh = _plan_new(rep, tasks)
                have = len(rep.columns)
                if not fresh:
                    return 0, have
                if have + len(fresh) > self.max_tasks:
                    raise ResourceExhausted(
                        f"pool {name!r} would hold {have + len(fresh)} tasks; "
                        f"the limit is {self.max_tasks}"
                    )
                new = columns_of(fresh)
                chunk = rk.TASK_CHUNK
                first = have // chunk
                merged = rep.columns.slice(first * chunk, have).concat(new)
                blobs = [
                    merged.slice(lo, lo + chunk).encode() for lo in range(0, len(merged), chunk)
                ]
                try:
                    self._run("add_tasks", rep.keys, have, have + len(fresh), first, *blobs)
                except _ScriptError as exc:
                    if exc.kind == "race":
                        continue
                    raise
                rep.add_columns(new)
                return len(fresh), have + len(fresh)
        raise StoreUnavailable(f"too many concurrent task additions to pool {name!r}; retry")

    @_redis_errors
    def get_pool(self, name: str) -> PoolStats:
        with self._synced(name, posteriors=True) as rep:
            return self._stats(rep)

    def _stats(self, rep: _Replica) -> PoolStats:
        st = rep.state
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(rep.keys.meta, "selctr", "expired")
        pipe.zcard(rep.keys.open)
        (selctr, expired), open_count = pipe.execute()
        return PoolStats(
            name=st.name,
            config=st.config,
            task_count=st.task_count,
            steps_applied=st.steps_applied,
            open_selections=int(open_count),
            last_effective_task_ratio=st.last_etr,
            rolling_effective_task_ratio=st.rolling_etr,
            capability=st.capability,
            tasks_with_references=st.derived.ref_count,
            selections_opened=int(selctr or 0),
            selections_expired=int(expired or 0),
            **engine_stats(st),
        )

    @_redis_errors
    def list_pools(self) -> list[PoolStats]:
        names = sorted(n.decode() for n in self.r.smembers(rk.POOLS))
        out = []
        for name in names:
            try:
                out.append(self.get_pool(name))
            except (NotFound, DataLoss):
                continue
        return out

    @_redis_errors
    def delete_pool(self, name: str) -> None:
        meta = self._meta(name)
        keys = rk.PoolKeys(name, meta[b"incarnation"].decode())
        try:
            self._run("delete_pool", keys, rk.TASK_CHUNK)
        except _Stale:
            raise NotFound(f"pool {name!r} not found") from None
        self.r.srem(rk.POOLS, name)
        self._forget(name)

    @_redis_errors
    def select(
        self, name: str, batch_size: int, run_id: str, step: int, expected_trials: float
    ) -> SelectionView:
        check_select_args(run_id, expected_trials)
        run = rk.run_key(run_id, step)
        with self._synced(name, posteriors=True) as rep:
            expected = expected_trials or rep.config.pseudo_rollouts
            n = rep.state.task_count
            if not 1 <= batch_size <= n:
                raise InvalidArgument(
                    f"batch_size must be in [1, {n}] for pool {name!r}, got {batch_size}"
                )
            reply = self._run("select_begin", rep.keys, run)
            if reply[0] == b"existing":
                return self._existing(rep, reply, batch_size, expected, run_id, step)
            number = int(reply[1])
            drawn = select_batch(rep.state, batch_size, number)
            version = rep.state.steps_applied
            deadline = self.clock() + rep.config.selection_wait_seconds
            reply = self._run(
                "select_commit",
                rep.keys,
                run,
                number,
                drawn.indices.astype("<u4").tobytes(),
                drawn.sampled.astype("<f8").tobytes(),
                drawn.means.astype("<f8").tobytes(),
                repr(float(expected)),
                repr(deadline),
                version,
                int(rep.config.selection_wait_seconds) + self.retention,
            )
            if reply[0] == b"existing":
                return self._existing(rep, reply, batch_size, expected, run_id, step)
            return SelectionView.of(
                f"{rep.keys.incarnation}-{number}", rep.state.keys, drawn.indices,
                drawn.sampled, drawn.means, replayed=False, version=version,
                expected_trials=expected,
            )  # fmt: skip

    def _existing(
        self,
        rep: _Replica,
        reply: list[Any],
        batch_size: int,
        expected: float,
        run_id: str,
        step: int,
    ) -> SelectionView:
        number = int(reply[1])
        idx = np.frombuffer(reply[2], dtype="<u4").astype(np.int64)
        sampled = np.frombuffer(reply[3], dtype="<f8")
        means = np.frombuffer(reply[4], dtype="<f8")
        stored_expected = float(reply[5])
        if len(idx) != batch_size or stored_expected != expected:
            raise AlreadyExists(
                f"run {run_id!r} step {step} was already selected with batch_size "
                f"{len(idx)} and expected_trials {stored_expected}"
            )
        return SelectionView.of(
            f"{rep.keys.incarnation}-{number}", rep.columns.keys, idx, sampled, means,
            replayed=True, version=int(reply[6]), expected_trials=stored_expected,
        )  # fmt: skip

    @_redis_errors
    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
    ) -> ReportAck:
        check_report_args(request_id, selection_id, outcomes, final)
        digest = payload_digest(selection_id, outcomes, final)
        with self._synced(name, posteriors=False) as rep:
            number = -1
            if selection_id:
                number = parse_selection_id(selection_id, rep.keys.incarnation, name)
            ev = _aggregate(rep, outcomes)
            packed = np.empty(len(ev.indices), dtype=_ENTRY)
            packed["i"], packed["s"], packed["t"] = ev.indices, ev.successes, ev.trials
            try:
                reply = self._run(
                    "report",
                    rep.keys,
                    request_id,
                    digest,
                    number,
                    "1" if final else "0",
                    packed.tobytes(),
                    self.dedup_ttl,
                    self.retention,
                )
            except _ScriptError as exc:
                raise _report_error(exc, selection_id, rep) from None
        state = _STATES[reply[1]]
        return ReportAck(reply[0] == b"dup", state, int(reply[2]), int(reply[3]))

    @_redis_errors
    def export_pool(self, name: str) -> PoolDump:
        with self._synced(name, posteriors=True) as rep:
            selctr = int(self.r.hget(rep.keys.meta, "selctr") or 0)
            return PoolDump.of_state(rep.state, selctr)

    @_redis_errors
    def import_pool(self, dump: PoolDump) -> PoolStats:
        state = dump.to_state(self.max_tasks)
        h = dump.header
        keys = rk.PoolKeys(h.name, uuid.uuid4().hex[:12])
        cols = Columns(list(state.keys), state.weak, state.strong, state.alpha0, state.beta0)
        chunk = rk.TASK_CHUNK
        blobs = [cols.slice(lo, lo + chunk).encode() for lo in range(0, len(cols), chunk)]
        info: dict[str, Any] = {
            "n": state.task_count,
            "capability": None if math.isnan(state.capability) else state.capability,
            "steps": state.steps_applied,
            "recent_etr": [],
        }
        reply = self._run(
            "import_pool",
            keys,
            json.dumps(h.config.to_dict(), sort_keys=True),
            self.clock(),
            state.task_count,
            state.steps_applied,
            h.selections_opened,
            state.alpha.astype("<f8").tobytes(),
            state.beta.astype("<f8").tobytes(),
            json.dumps(info),
            *blobs,
        )
        if reply[0] == b"existing":
            raise AlreadyExists(f"pool {h.name!r} already exists")
        self.r.sadd(rk.POOLS, h.name)
        return self.get_pool(h.name)

    @_redis_errors
    def expire_due(self) -> int:
        closed = 0
        for raw in self.r.smembers(rk.POOLS):
            name = raw.decode()
            inc = self.r.hget(rk.meta(name), "incarnation")
            if inc is None:
                continue
            try:
                reply = self._run(
                    "expire", rk.PoolKeys(name, inc.decode()), self.clock(), 100, self.retention
                )
            except _Stale:
                continue
            closed += int(reply[1])
        return closed

    def healthy(self) -> bool:
        try:
            self.r.ping()
            self._check_epoch()
            return True
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.r.close()


class _Stale(Exception):
    """The pool changed incarnation (or vanished) under this replica."""


class _ScriptError(Exception):
    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(f"{kind}: {msg}")
        self.kind = kind
        self.msg = msg


def _report_error(exc: _ScriptError, selection_id: str, rep: _Replica) -> ServiceError:
    if exc.kind == "conflict":
        return AlreadyExists("request_id was already used with a different payload")
    if exc.kind == "closed":
        return FailedPrecondition(
            f"selection {selection_id!r} is already closed; report late evidence "
            "without a selection_id"
        )
    if exc.kind == "no_selection":
        return NotFound(f"selection {selection_id!r} not found in pool {rep.keys.pool!r}")
    if exc.kind == "not_member":
        key = rep.columns.keys[int(exc.msg)]
        return FailedPrecondition(f"task {key!r} is not part of selection {selection_id!r}")
    return StoreUnavailable(f"unexpected store reply {exc}")


def _seq_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def _aggregate(rep: _Replica, outcomes: Sequence[OutcomeIn]) -> Evidence:
    """Sums outcomes per task using the replica's task table (not its posteriors)."""
    view = PoolState(rep.keys.pool, rep.config)
    view.index = rep.task_index
    view.keys = rep.columns.keys
    return aggregate(view, ((o.task_key, o.successes, o.trials) for o in outcomes))


def _plan_new(rep: _Replica, specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """Validated specs not yet in the pool; TaskConflictError for a changed one."""
    fresh: dict[str, TaskSpec] = {}
    cols = rep.columns
    for spec in specs:
        spec.validate()
        i = rep.task_index.get(spec.key)
        if i is not None:
            have = TaskSpec(
                spec.key,
                float(cols.weak[i]),
                float(cols.strong[i]),
                float(cols.prior_alpha[i]),
                float(cols.prior_beta[i]),
            )
            if not have.same_as(spec):
                raise TaskConflictError(
                    f"task {spec.key!r} already exists in pool {rep.keys.pool!r} "
                    "with different reference rates or prior"
                )
            continue
        seen = fresh.get(spec.key)
        if seen is not None and not seen.same_as(spec):
            raise InvalidArgument(f"task {spec.key!r} is given twice, differently")
        fresh.setdefault(spec.key, spec)
    return list(fresh.values())

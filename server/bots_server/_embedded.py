"""The embedded store: pools in process memory, durable in a data directory.

Layout of ``data_dir``::

    LOCK                      held (flock) by the one server using the directory
    pools/<name>/snapshot.bin state as of record number `seq` (atomic replace)
    pools/<name>/journal.log  records applied after the snapshot

Each change is planned (validated), appended to the pool's journal (fsynced
by default) and only then applied in memory and acknowledged. On start every
pool is rebuilt from its snapshot plus the journal records after it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bots_core import PoolConfig, PoolState, TaskSpec

from bots_server._errors import (
    AlreadyExists,
    NotFound,
    ResourceExhausted,
    StoreUnavailable,
)
from bots_server._journal import Journal, fsync_dir, replay, write_atomic
from bots_server._model import OutcomeIn, PoolStats, ReportAck, SelectionView
from bots_server._pool import PoolRuntime, Record, check_pool_name
from bots_server._store import PoolDump, Store

log = logging.getLogger(__name__)

_SNAP_MAGIC = b"BOTSSNAP\x01"
T = TypeVar("T")


class _Pool:
    """A pool's runtime, its lock and its journal."""

    def __init__(self, runtime: PoolRuntime, directory: Path, journal: Journal) -> None:
        self.runtime = runtime
        self.dir = directory
        self.journal = journal
        self.lock = threading.Lock()
        self.since_snapshot = 0
        self.deleted = False


class EmbeddedStore(Store):
    """In-process pools persisted as snapshot + journal under ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        snapshot_every: int = 1000,
        max_tasks_per_pool: int = 50_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(data_dir)
        self.fsync = fsync
        self.snapshot_every = max(1, snapshot_every)
        self.max_tasks = max_tasks_per_pool
        self.clock = clock
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        (self.root / "pools").mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(
                f"data directory {self.root} is in use by another bots server"
            ) from None
        self._load()

    # --------------------------------------------------------------- loading
    def _load(self) -> None:
        pools_dir = self.root / "pools"
        for entry in sorted(pools_dir.iterdir()):
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)  # unfinished create or delete
                continue
            snap = entry / "snapshot.bin"
            if not snap.exists():
                continue
            runtime = _read_snapshot(snap)
            replayed = 0
            for record in replay(entry / "journal.log"):
                if record["seq"] <= runtime.seq:
                    continue
                runtime.apply(record)
                replayed += 1
            pool = _Pool(runtime, entry, Journal(entry / "journal.log", fsync=self.fsync))
            pool.since_snapshot = replayed
            self._pools[runtime.state.name] = pool
            log.info(
                "loaded pool %s: %d tasks, %d steps, %d journal records",
                runtime.state.name,
                runtime.state.task_count,
                runtime.state.steps_applied,
                replayed,
            )

    # ------------------------------------------------------------- plumbing
    def _get(self, name: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(name)
        if pool is None:
            raise NotFound(f"pool {name!r} not found")
        return pool

    def _locked(self, name: str, fn: Callable[[_Pool], T]) -> T:
        pool = self._get(name)
        with pool.lock:
            if pool.deleted:
                raise NotFound(f"pool {name!r} not found")
            return fn(pool)

    def _commit(self, pool: _Pool, record: Record) -> Any:
        """Makes a record durable, then applies it."""
        record["seq"] = pool.runtime.seq + 1
        try:
            pool.journal.append(record)
        except OSError as exc:
            log.error("journal write failed for pool %s: %s", pool.runtime.state.name, exc)
            raise StoreUnavailable("the store could not persist the change; retry later") from exc
        result = pool.runtime.apply(record)
        pool.since_snapshot += 1
        if pool.since_snapshot >= self.snapshot_every:
            self._snapshot(pool)
        return result

    def _snapshot(self, pool: _Pool) -> None:
        try:
            write_atomic(pool.dir / "snapshot.bin", _snapshot_bytes(pool.runtime))
            pool.journal.truncate()
            pool.since_snapshot = 0
        except OSError as exc:  # the journal still holds everything
            log.warning("snapshot of %s failed: %s", pool.runtime.state.name, exc)

    def _install(self, runtime: PoolRuntime) -> _Pool:
        """Writes a new pool directory atomically and registers it (store lock held)."""
        name = runtime.state.name
        tmp = self.root / "pools" / f".new-{uuid.uuid4().hex}"
        tmp.mkdir()
        write_atomic(tmp / "snapshot.bin", _snapshot_bytes(runtime))
        final = self.root / "pools" / name
        os.replace(tmp, final)
        fsync_dir(final.parent)
        pool = _Pool(runtime, final, Journal(final / "journal.log", fsync=self.fsync))
        self._pools[name] = pool
        return pool

    # ------------------------------------------------------------ interface
    def create_pool(
        self, name: str, config: PoolConfig, tasks: Sequence[TaskSpec]
    ) -> tuple[PoolStats, bool, int]:
        check_pool_name(name)
        with self._lock:
            existing = self._pools.get(name)
            if existing is None:
                state = PoolState(name, config)
                if len(tasks) > self.max_tasks:
                    raise ResourceExhausted(
                        f"pool {name!r} would hold {len(tasks)} tasks; the limit is {self.max_tasks}"
                    )
                added = state.add_tasks(tasks)
                runtime = PoolRuntime(state, uuid.uuid4().hex[:12])
                try:
                    self._install(runtime)
                except OSError as exc:
                    raise StoreUnavailable(f"could not create pool {name!r}: {exc}") from exc
                return runtime.stats(), True, added
        if existing.runtime.state.config != config:
            raise AlreadyExists(f"pool {name!r} already exists with a different config")
        added, _ = self.add_tasks(name, tasks)
        return self.get_pool(name), False, added

    def add_tasks(self, name: str, tasks: Sequence[TaskSpec]) -> tuple[int, int]:
        def run(pool: _Pool) -> tuple[int, int]:
            before = pool.runtime.state.task_count
            record = pool.runtime.plan_add(tasks, self.max_tasks)
            if record is not None:
                self._commit(pool, record)
            after = pool.runtime.state.task_count
            return after - before, after

        return self._locked(name, run)

    def get_pool(self, name: str) -> PoolStats:
        return self._locked(name, lambda p: p.runtime.stats())

    def list_pools(self) -> list[PoolStats]:
        with self._lock:
            names = sorted(self._pools)
        out = []
        for name in names:
            try:
                out.append(self.get_pool(name))
            except NotFound:
                continue  # deleted meanwhile
        return out

    def delete_pool(self, name: str) -> None:
        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                raise NotFound(f"pool {name!r} not found")
            with pool.lock:
                pool.deleted = True
                pool.journal.close()
                trash = self.root / "pools" / f".del-{uuid.uuid4().hex}"
                os.replace(pool.dir, trash)
                fsync_dir(trash.parent)
                del self._pools[name]
        shutil.rmtree(trash, ignore_errors=True)

    def select(
        self, name: str, batch_size: int, run_id: str, step: int, expected_trials: float
    ) -> SelectionView:
        def run(pool: _Pool) -> SelectionView:
            record, view = pool.runtime.plan_select(
                batch_size, run_id, step, expected_trials, self.clock()
            )
            if record is None:
                assert view is not None
                return view
            result: SelectionView = self._commit(pool, record)
            return result

        return self._locked(name, run)

    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
    ) -> ReportAck:
        def run(pool: _Pool) -> ReportAck:
            record, ack = pool.runtime.plan_report(request_id, selection_id, outcomes, final)
            if record is None:
                assert ack is not None
                return ack
            result: ReportAck = self._commit(pool, record)
            return result

        return self._locked(name, run)

    def export_pool(self, name: str) -> PoolDump:
        def run(pool: _Pool) -> PoolDump:
            return PoolDump.of_state(pool.runtime.state, pool.runtime.state.selections_opened)

        return self._locked(name, run)

    def import_pool(self, dump: PoolDump) -> PoolStats:
        runtime = PoolRuntime(dump.to_state(self.max_tasks), uuid.uuid4().hex[:12])
        with self._lock:
            if dump.header.name in self._pools:
                raise AlreadyExists(f"pool {dump.header.name!r} already exists")
            try:
                self._install(runtime)
            except OSError as exc:
                raise StoreUnavailable(f"could not import pool: {exc}") from exc
        return runtime.stats()

    def expire_due(self) -> int:
        with self._lock:
            pools = list(self._pools.values())
        closed = 0
        now = self.clock()
        for pool in pools:
            with pool.lock:
                if pool.deleted:
                    continue
                for record in pool.runtime.plan_expire(now):
                    self._commit(pool, record)
                    closed += 1
        return closed

    def healthy(self) -> bool:
        return os.access(self.root / "pools", os.W_OK)

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                with pool.lock:
                    if pool.since_snapshot:
                        self._snapshot(pool)
                    pool.journal.close()
            self._pools.clear()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def _snapshot_bytes(runtime: PoolRuntime) -> bytes:
    state = runtime.state.to_bytes()
    meta = json.dumps(runtime.meta_to_json(), separators=(",", ":")).encode()
    return _SNAP_MAGIC + struct.pack("<Q", len(state)) + state + meta


def _read_snapshot(path: Path) -> PoolRuntime:
    data = path.read_bytes()
    if not data.startswith(_SNAP_MAGIC):
        raise RuntimeError(f"{path} is not a bots snapshot")
    pos = len(_SNAP_MAGIC)
    (n,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    state = PoolState.from_bytes(data[pos : pos + n])
    meta = json.loads(data[pos + n :])
    runtime = PoolRuntime(state, meta["incarnation"])
    runtime.load_meta(meta)
    return runtime

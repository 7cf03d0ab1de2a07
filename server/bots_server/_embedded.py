"""The embedded store: pools in process memory, durable in a data directory.

Layout of ``data_dir``::

    LOCK                                 held (flock) by the one server using it
    pools/<name>/snapshot.bin            checksummed image as of some record seq S
    pools/<name>/snapshot.prev.bin       the image before it (for `bots recover`)
    pools/<name>/journal-<seq>.log       journal segments: every record after
                                         the previous image, fsynced before the answer

A snapshot is captured under the pool lock (copies, no encoding), and encoded
and written by the thread that triggered it after the lock is released; the
journal rotates to a new segment at the same moment, and segments older than
the previous image are deleted once the new one is on disk.

A pool whose snapshot or journal is damaged (anything but a torn tail, see
:mod:`bots_server._journal`) is loaded as *damaged*: its requests fail with
DATA_LOSS naming the file and offset, other pools serve as usual, and the
operator runs ``bots recover`` (:func:`recover_pool`) to continue from the
last intact record.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bots_server._errors import DataLoss, NotFound, StoreUnavailable, short
from bots_server._journal import (
    Damage,
    Journal,
    JournalBroken,
    fsync_dir,
    read_segments,
    segments,
    write_atomic,
)
from bots_server._logstore import LogStore, PoolHandle
from bots_server._pool import PoolRuntime, Retention
from bots_server._records import Record, decode, encode
from bots_server._snapshot import CorruptImage, capture
from bots_server._snapshot import decode as decode_image
from bots_server._snapshot import encode as encode_image

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot.bin"
PREVIOUS = "snapshot.prev.bin"


class _Pool(PoolHandle):
    """A pool's runtime, lock, directory and open journal segment."""

    def __init__(self, name: str, runtime: PoolRuntime | None, directory: Path) -> None:
        super().__init__(name, runtime)
        self.dir = directory
        self.journal: Journal | None = None
        self.since_snapshot = 0
        self.snapshotting = False
        self.snapshot_seq = 0  # record seq of the newest snapshot on disk


class EmbeddedStore(LogStore):
    """In-process pools persisted as snapshots + journal segments under ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        snapshot_every: int = 1000,
        max_tasks_per_pool: int = 50_000_000,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            retention=retention or Retention(), max_tasks_per_pool=max_tasks_per_pool, clock=clock
        )
        self.root = Path(data_dir)
        self.fsync = fsync
        self.snapshot_every = max(1, snapshot_every)
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        (self.root / "pools").mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_data_dir(self.root)
        for entry in sorted((self.root / "pools").iterdir()):
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)  # unfinished create or delete
            elif entry.is_dir():
                self._pools[entry.name] = self._load(entry)

    # --------------------------------------------------------------- loading
    def _load(self, directory: Path) -> _Pool:
        pool = _Pool(directory.name, None, directory)
        runtime, image_seq, damage = load_pool(directory, self.retention)
        pool.runtime = runtime
        if damage is not None:
            pool.damage = (
                f"pool {short(directory.name)} is damaged and does not serve: {damage.describe()}. "
                f"Stop the server and run `bots recover --data-dir {self.root} {directory.name}` "
                "(docs/operations.md, 'Recovering a damaged pool')"
            )
            log.error("%s", pool.damage)
            return pool
        assert runtime is not None
        pool.journal = Journal(directory, runtime.seq + 1, fsync=self.fsync)
        pool.snapshot_seq = image_seq
        log.info(
            "loaded pool %s: %d tasks, %d steps, record %d",
            runtime.name, runtime.tasks.task_count, runtime.steps_applied, runtime.seq,
        )  # fmt: skip
        return pool

    # ----------------------------------------------------------------- hooks
    def _handle(self, name: str) -> PoolHandle:
        with self._lock:
            pool = self._pools.get(name)
        if pool is None:
            raise NotFound(f"pool {short(name)} not found")
        return pool

    def _sync(self, h: PoolHandle) -> PoolRuntime:
        if h.damage is not None:
            raise DataLoss(h.damage)
        assert h.runtime is not None
        return h.runtime

    def _append(self, h: PoolHandle, record: Record) -> int:
        assert isinstance(h, _Pool) and h.journal is not None and h.runtime is not None
        seq = h.runtime.seq + 1
        try:
            h.journal.append(seq, encode(record))
        except JournalBroken as exc:
            h.damage = f"pool {short(h.name)} stopped taking changes: {exc}; restart the server"
            log.error("%s", h.damage)
            raise StoreUnavailable(h.damage) from exc
        except OSError as exc:
            log.error("journal write failed for pool %s: %s", h.name, exc)
            raise StoreUnavailable(
                f"the store could not persist the change ({exc.strerror or exc}); nothing "
                "was applied; retry later"
            ) from exc
        return seq

    def _after_apply(self, h: PoolHandle) -> Callable[[], None] | None:
        assert isinstance(h, _Pool)
        h.since_snapshot += 1
        return self._after_read(h)

    def _after_read(self, h: PoolHandle) -> Callable[[], None] | None:
        assert isinstance(h, _Pool)
        if h.since_snapshot < self.snapshot_every or h.snapshotting or h.damage is not None:
            return None
        return self._begin_snapshot(h)

    def _begin_snapshot(self, pool: _Pool) -> Callable[[], None] | None:
        """Captures the pool and rotates its journal (lock held); returns the writer."""
        assert pool.runtime is not None and pool.journal is not None
        image = capture(pool.runtime, with_tasks=True)
        try:
            journal = Journal(pool.dir, image.seq + 1, fsync=self.fsync)
        except OSError as exc:
            log.warning("snapshot of %s postponed: %s", pool.name, exc)
            return None
        pool.journal.close()
        pool.journal = journal
        pool.since_snapshot = 0
        pool.snapshotting = True

        def write() -> None:
            try:
                save_snapshot(pool.dir, encode_image(image), previous_seq=pool.snapshot_seq)
                pool.snapshot_seq = image.seq
            except OSError as exc:  # the journal still holds everything
                log.warning("snapshot of %s failed: %s", pool.name, exc)
            finally:
                with pool.lock:
                    pool.snapshotting = False

        return write

    def _install(self, runtime: PoolRuntime) -> bool:
        name = runtime.name
        with self._lock:
            if name in self._pools:
                return False
            tmp = self.root / "pools" / f".new-{uuid.uuid4().hex}"
            try:
                tmp.mkdir()
                write_atomic(tmp / SNAPSHOT, encode_image(capture(runtime, with_tasks=True)))
                final = self.root / "pools" / name
                os.replace(tmp, final)
                fsync_dir(final.parent)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreUnavailable(f"could not create pool {short(name)}: {exc}") from exc
            pool = _Pool(name, runtime, final)
            pool.journal = Journal(final, runtime.seq + 1, fsync=self.fsync)
            self._pools[name] = pool
        return True

    def _remove(self, name: str) -> None:
        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                raise NotFound(f"pool {short(name)} not found")
            with pool.lock:
                pool.deleted = True
                if pool.journal is not None:
                    pool.journal.close()
                trash = self.root / "pools" / f".del-{uuid.uuid4().hex}"
                os.replace(pool.dir, trash)
                fsync_dir(trash.parent)
                del self._pools[name]
        shutil.rmtree(trash, ignore_errors=True)

    def _names(self) -> list[str]:
        with self._lock:
            return list(self._pools)

    def _due(self, now: float) -> list[str]:
        with self._lock:
            pools = list(self._pools.values())
        return [
            p.name
            for p in pools
            if p.damage is None and p.runtime is not None and p.runtime.next_deadline() <= now
        ]

    # -------------------------------------------------------------- lifecycle
    def healthy(self) -> bool:
        return os.access(self.root / "pools", os.W_OK)

    def close(self) -> None:
        self._stop_applier()
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            writer = None
            with pool.lock:
                if pool.damage is None and pool.since_snapshot and not pool.snapshotting:
                    writer = self._begin_snapshot(pool)
            if writer is not None:
                writer()
            with pool.lock:
                if pool.journal is not None:
                    pool.journal.close()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def lock_data_dir(root: Path) -> int:
    """Takes the data directory's flock (RuntimeError when another server holds it)."""
    fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"data directory {root} is in use by another bots server") from None
    return fd


def save_snapshot(directory: Path, data: bytes, *, previous_seq: int) -> None:
    """Installs a new snapshot, keeps the last one (at ``previous_seq``) as the previous,
    and drops the journal segments that only hold records before it."""
    tmp = directory / (SNAPSHOT + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    current, previous = directory / SNAPSHOT, directory / PREVIOUS
    if current.exists():
        os.replace(current, previous)
    os.replace(tmp, current)
    fsync_dir(directory)
    segs = segments(directory)
    for (_first, path), (nxt, _) in itertools.pairwise(segs):
        if nxt <= previous_seq + 1:  # every record of this segment is in the previous image
            with contextlib.suppress(OSError):
                path.unlink()


def load_pool(
    directory: Path, retention: Retention
) -> tuple[PoolRuntime | None, int, Damage | None]:
    """A pool's runtime from its newest snapshot plus journal, the snapshot's record seq,
    and where the files are damaged (None when they are not)."""
    current, previous = directory / SNAPSHOT, directory / PREVIOUS
    # A crash between the two renames of save_snapshot leaves only the previous image.
    base = current if current.exists() else previous
    try:
        runtime = decode_image(base.read_bytes(), retention)
    except (OSError, CorruptImage) as exc:
        return None, 0, Damage(base, 0, f"snapshot unreadable: {exc}")
    image_seq = runtime.seq
    records, damage = read_segments(directory)
    runtime, damage = _replay(directory, runtime, records, damage)
    return runtime, image_seq, damage


def _replay(
    directory: Path,
    runtime: PoolRuntime,
    records: list[tuple[int, bytes]],
    damage: Damage | None,
) -> tuple[PoolRuntime, Damage | None]:
    """Applies the journal records after the snapshot; a record that does not fit is damage."""
    journal = directory / "journal-*.log"
    for seq, payload in records:
        if seq <= runtime.seq:
            continue
        if seq != runtime.seq + 1:
            reason = f"the journal resumes at record {seq} after the snapshot's {runtime.seq}"
            return runtime, Damage(journal, 0, reason)
        try:
            runtime.apply(seq, decode(payload))
        except Exception as exc:  # a record that does not apply is damage, whatever it is
            return runtime, Damage(journal, 0, f"record {seq} does not apply: {exc}")
    return runtime, damage


@dataclass(frozen=True)
class Recovery:
    """What ``bots recover`` did to a pool."""

    pool: str
    base: str
    records_kept: int
    last_seq: int
    damage: str | None
    moved_aside: list[str]


def recover_pool(data_dir: str | os.PathLike[str], name: str) -> Recovery:
    """Makes a damaged pool serve again from its last intact record (server stopped).

    Uses the newest intact snapshot (the previous one when the newest is
    unreadable) and the journal records after it up to the first damage.
    The journal segments and any unreadable snapshot are moved to
    ``pools/<name>/damaged-<time>/`` (nothing is deleted), and a new snapshot
    is written. Every step is logged at WARNING.
    """
    root = Path(data_dir)
    directory = root / "pools" / name
    if not directory.is_dir():
        raise NotFound(f"pool {short(name)} not found in {root}")
    fd = lock_data_dir(root)
    try:
        retention = Retention()
        runtime = None
        base = ""
        moved: list[str] = []
        aside = directory / f"damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        for candidate in (directory / SNAPSHOT, directory / PREVIOUS):
            try:
                runtime = decode_image(candidate.read_bytes(), retention)
                base = candidate.name
                break
            except (OSError, CorruptImage) as exc:
                log.warning("recover %s: %s is unusable (%s)", name, candidate.name, exc)
        if runtime is None:
            raise DataLoss(
                f"pool {short(name)}: neither snapshot is readable; restore from an export"
            )
        start = runtime.seq
        records, damage = read_segments(directory)
        runtime, damage2 = _replay(directory, runtime, records, damage)
        damage = damage or damage2
        if damage is not None:
            log.warning("recover %s: dropping everything after %s", name, damage.describe())
        log.warning(
            "recover %s: continuing from %s at record %d plus %d journal records (last %d)",
            name, base, start, runtime.seq - start, runtime.seq,
        )  # fmt: skip
        aside.mkdir()
        for path in [p for _, p in segments(directory)] + [
            p for p in (directory / SNAPSHOT, directory / PREVIOUS) if p.exists()
        ]:
            os.replace(path, aside / path.name)
            moved.append(str(aside / path.name))
        write_atomic(directory / SNAPSHOT, encode_image(capture(runtime, with_tasks=True)))
        log.warning("recover %s: old files moved to %s", name, aside)
        return Recovery(
            name, base, runtime.seq - start, runtime.seq,
            damage.describe() if damage else None, moved,
        )  # fmt: skip
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

"""The Store interface implemented once over an ordered, durable record log.

Every request runs the same way on every backend: take the pool's lock, bring
the runtime up to the head of the log (a no-op for the embedded store, the
log tail for a Redis replica), *plan* the request against it, *append* the
record at the next sequence number (compare-and-set: another replica may have
appended first, then the request is planned again), and *apply* it. The
rules live in :mod:`bots_server._pool`; a backend only stores and orders.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Union

from bots_core import PoolConfig, PoolState, TaskSpec

from bots_server._errors import (
    AlreadyExists,
    DataLoss,
    NotFound,
    StoreUnavailable,
    short,
)
from bots_server._model import OutcomeIn, PoolStats, ReportAck, SelectionView
from bots_server._pool import PoolRuntime, Retention, check_pool_name
from bots_server._records import AddTasks, Expire, F32Array, OpenSelection, Record, Report
from bots_server._store import PoolDump, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Planned = Union[Record, SelectionView, ReportAck, None]  # noqa: UP007
# Pause of the step applier between two steps, so that requests get the pool lock.
APPLIER_PAUSE_SECONDS = 0.002
# Rounds of plan + append one request may take when replicas keep appending first.
MAX_ATTEMPTS = 50


class Conflict(Exception):
    """The log moved past the runtime's sequence number: sync and plan again.

    ``entries`` may carry the (seq, record) pairs the runtime missed, read in
    the same round trip as the failed append.
    """

    def __init__(self, head: int, entries: list[tuple[int, Record]] | None = None) -> None:
        super().__init__(f"the log is at record {head}")
        self.head = head
        self.entries = entries or []


class PoolHandle:
    """A pool as one server process holds it: its runtime and its lock.

    ``runtime`` is None while a Redis replica has not loaded the pool yet.
    ``damage`` says why an embedded pool refuses to serve (None when healthy).
    """

    def __init__(self, name: str, runtime: PoolRuntime | None) -> None:
        self.name = name
        self.runtime = runtime
        self.lock = threading.Lock()
        self.deleted = False
        self.damage: str | None = None


class LogStore(Store):
    """Pools as runtimes over a per-pool record log; subclasses provide the log.

    Steps (closed selections, standalone reports) are applied to the
    posteriors lazily (see ``bots_server._pool``). A background thread applies
    them one at a time, taking the pool lock for each and pausing between
    steps, so that reports stay cheap, steps never pile up into a long pause,
    and a draw seldom finds a step left to apply. Each step is applied alone,
    by ``bots_core.apply_step``, so every replica computes bit-identical
    posteriors whenever it happens to apply them.
    """

    def __init__(
        self,
        *,
        retention: Retention,
        max_tasks_per_pool: int,
        clock: Callable[[], float],
    ) -> None:
        self.retention = retention
        self.max_tasks = max_tasks_per_pool
        self.clock = clock
        self._waiting: queue.SimpleQueue[PoolHandle | None] = queue.SimpleQueue()
        self._applier = threading.Thread(
            target=self._apply_in_background, name="bots-step-applier", daemon=True
        )
        self._applier.start()

    def _apply_in_background(self) -> None:
        while True:
            h = self._waiting.get()
            if h is None:
                return
            left = 1
            while left:
                with h.lock:
                    rt = h.runtime
                    if h.deleted or rt is None or h.damage is not None:
                        break
                    try:
                        left = rt.apply_pending(1)
                    except Exception:  # the request that needs the posteriors will say why
                        log.exception("applying a step of pool %s failed", h.name)
                        break
                # Requests come first: a thread waiting for the lock gets it before
                # this one takes it again (a released lock is not handed over fairly).
                time.sleep(APPLIER_PAUSE_SECONDS)

    def _stop_applier(self) -> None:
        self._waiting.put(None)
        self._applier.join(timeout=10)

    # ------------------------------------------------------------ backend hooks
    @abc.abstractmethod
    def _handle(self, name: str) -> PoolHandle:
        """The pool's handle (NotFound when there is no such pool)."""

    @abc.abstractmethod
    def _sync(self, h: PoolHandle) -> PoolRuntime:
        """Brings ``h.runtime`` up to the head of the log (pool lock held)."""

    @abc.abstractmethod
    def _append(self, h: PoolHandle, record: Record) -> int:
        """Makes ``record`` durable right after ``h.runtime.seq``; returns its seq.

        Raises Conflict when the log has moved on.
        """

    @abc.abstractmethod
    def _after_apply(self, h: PoolHandle) -> Callable[[], None] | None:
        """Checkpoint policy after a record: work to run once the lock is released, if any."""

    def _after_read(self, h: PoolHandle) -> Callable[[], None] | None:
        """Checkpoint policy after a read (which may have applied the pending steps)."""
        return None

    @abc.abstractmethod
    def _install(self, runtime: PoolRuntime) -> bool:
        """Creates a pool from a runtime, atomically; False when the name is taken."""

    @abc.abstractmethod
    def _remove(self, name: str) -> None:
        """Deletes a pool (NotFound when there is none)."""

    @abc.abstractmethod
    def _names(self) -> list[str]:
        """Names of every pool."""

    def _due(self, now: float) -> list[str]:
        """Pools that may hold an open selection past its deadline."""
        return self._names()

    # Whether requests may be planned on the runtime held, without a sync first.
    optimistic = False

    def _absorb(self, h: PoolHandle, conflict: Conflict) -> bool:
        """Applies the records a Conflict brought; True when the runtime is now current."""
        rt = h.runtime
        if rt is None:
            return False
        for seq, record in conflict.entries:
            if seq != rt.seq + 1:
                return False
            rt.apply(seq, record)
        return rt.seq == conflict.head

    # ------------------------------------------------------------- the one path
    def _write(
        self, name: str, plan: Callable[[PoolRuntime], Planned], *, optimistic: bool = True
    ) -> Planned:
        """Plans, appends and applies one record; returns its result or the plan's answer.

        An optimistic backend plans on the runtime it holds and lets the
        compare-and-set append tell whether that runtime was current; anything
        but a record to append (an error, a replay, a duplicate) is answered
        only from a runtime synced with the log.
        """
        need_sync = not (self.optimistic and optimistic)
        for _ in range(MAX_ATTEMPTS):
            h = self._handle(name)
            after: Callable[[], None] | None = None
            with h.lock:
                if h.deleted:
                    raise NotFound(f"pool {short(name)} not found")
                synced = need_sync or h.runtime is None
                rt = self._sync(h) if synced else h.runtime
                assert rt is not None
                try:
                    planned = plan(rt)
                except Exception:
                    if synced:
                        raise
                    need_sync = True
                    continue
                if not isinstance(planned, (AddTasks, OpenSelection, Report, Expire)):
                    if synced:
                        return planned
                    need_sync = True
                    continue
                try:
                    seq = self._append(h, planned)
                except Conflict as conflict:
                    need_sync = not self._absorb(h, conflict)
                    continue
                result = rt.apply(seq, planned)
                after = self._after_apply(h)
                if rt.pending:
                    self._waiting.put(h)
            if after is not None:
                after()
            return result
        raise StoreUnavailable(
            f"pool {short(name)} is changing too fast to commit this request; retry"
        )

    def _read(self, name: str, fn: Callable[[PoolRuntime], T]) -> T:
        h = self._handle(name)
        with h.lock:
            if h.deleted:
                raise NotFound(f"pool {short(name)} not found")
            result = fn(self._sync(h))
            after = self._after_read(h)
        if after is not None:
            after()
        return result

    # ---------------------------------------------------------------- interface
    def create_pool(
        self,
        name: str,
        config: PoolConfig,
        tasks: Sequence[TaskSpec],
        embeddings: F32Array | None = None,
    ) -> tuple[PoolStats, bool, int]:
        check_pool_name(name)
        runtime = self._new_runtime(PoolState(name, config))
        record = runtime.plan_add(tasks, self.max_tasks, self.clock(), embeddings)
        if record is not None:
            runtime.add_columns(record)
        if self._install(runtime):
            return runtime.stats(), True, runtime.tasks.task_count
        existing = self._read(name, lambda rt: rt.tasks.config)
        if existing != config:
            raise AlreadyExists(f"pool {short(name)} already exists with a different config")
        added, _ = self.add_tasks(name, tasks, embeddings)
        return self.get_pool(name), False, added

    def add_tasks(
        self, name: str, tasks: Sequence[TaskSpec], embeddings: F32Array | None = None
    ) -> tuple[int, int]:
        seen: list[tuple[int, int]] = []

        def plan(rt: PoolRuntime) -> Planned:
            record = rt.plan_add(tasks, self.max_tasks, self.clock(), embeddings)
            seen[:] = [(rt.tasks.task_count, len(record.tasks) if record else 0)]
            return record

        self._write(name, plan)
        before, added = seen[0]
        return added, before + added

    def get_pool(self, name: str) -> PoolStats:
        return self._read(name, lambda rt: rt.stats())

    def list_pools(self) -> list[PoolStats]:
        out = []
        for name in sorted(self._names()):
            try:
                out.append(self.get_pool(name))
            except NotFound:
                continue  # deleted meanwhile
            except DataLoss as exc:
                log.warning("ListPools leaves out pool %s: %s", name, exc)
        return out

    def delete_pool(self, name: str) -> None:
        self._remove(name)

    def select(
        self,
        name: str,
        batch_size: int,
        run_id: str,
        step: int,
        expected_trials: float,
        wait_seconds: float = 0.0,
    ) -> SelectionView:
        result = self._write(
            name,
            lambda rt: rt.plan_select(
                batch_size, run_id, step, expected_trials, self.clock(), wait_seconds
            ),
            # A draw is worth a round trip: planning it on a stale runtime would draw twice.
            optimistic=False,
        )
        assert isinstance(result, SelectionView)
        return result

    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
        run_id: str = "",
    ) -> ReportAck:
        memo: dict[str, Any] = {}  # what replanning after a lost compare-and-set can keep
        result = self._write(
            name,
            lambda rt: rt.plan_report(
                request_id, selection_id, outcomes, final, self.clock(), run_id, memo
            ),
        )
        assert isinstance(result, ReportAck)
        return result

    def export_pool(self, name: str) -> PoolDump:
        return self._read(
            name, lambda rt: PoolDump.of_state(rt.engine(), rt.tasks.selections_opened)
        )

    def import_pool(self, dump: PoolDump) -> PoolStats:
        runtime = self._new_runtime(dump.to_state(self.max_tasks))
        if not self._install(runtime):
            raise AlreadyExists(f"pool {short(dump.header.name)} already exists")
        return runtime.stats()

    def expire_due(self) -> int:
        closed = 0
        now = self.clock()
        found = [True]

        def plan(rt: PoolRuntime) -> Planned:
            due = rt.plan_expire(now)
            found[0] = bool(due)
            return due[0] if due else None

        for name in self._due(now):
            try:
                while True:
                    self._write(name, plan)
                    if not found[0]:
                        break
                    closed += 1
            except (NotFound, DataLoss):
                continue
        return closed

    def _new_runtime(self, state: PoolState) -> PoolRuntime:
        return PoolRuntime(state, uuid.uuid4().hex[:12], self.retention)

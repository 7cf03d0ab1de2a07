"""Background sender of outcome reports: bounded queue, retries with one request id, flush on close."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from bots_client import (
    BotsError,
    ConflictError,
    Outcome,
    OverloadedError,
    ReportResult,
    SelectorClient,
    UnavailableError,
)

from bots_adapters._outcomes import RewardMode, group_rewards

log = logging.getLogger("bots_adapters.reporter")

_RETRYABLE = (UnavailableError, OverloadedError)


class ReportQueueFull(RuntimeError):
    """The reporter's queue stayed full for ``put_timeout`` seconds (or ``block=False``)."""


class ReportFailedError(RuntimeError):
    """One or more reports could not be delivered; ``failed`` holds them for inspection or resend.

    Attributes:
        failed: The undelivered reports, each with the error that stopped it.
    """

    def __init__(self, failed: Sequence[PendingReport]) -> None:
        self.failed = list(failed)
        first = self.failed[0]
        super().__init__(
            f"{len(self.failed)} report(s) could not be delivered; first: request_id="
            f"{first.request_id} selection_id={first.selection_id!r}: {first.error!r}"
        )


@dataclasses.dataclass
class PendingReport:
    """A report waiting in (or having left) the queue.

    Attributes:
        request_id: Idempotency key, reused for every retry.
        outcomes: The evidence.
        selection_id: Selection the evidence belongs to ("" = standalone).
        final: Close the selection after this report.
        attempts: Send attempts so far.
        error: The error that made delivery fail, if it failed.
        result: The server's answer once delivered.
    """

    request_id: str
    outcomes: tuple[Outcome, ...]
    selection_id: str
    final: bool
    attempts: int = 0
    error: BaseException | None = None
    result: ReportResult | None = None


@dataclasses.dataclass
class ReporterStats:
    """Counters of an `OutcomeReporter` (read them any time; updated by its thread).

    Attributes:
        enqueued: Reports accepted by `report`.
        delivered: Reports the server acknowledged (duplicates included).
        duplicates: Acknowledged reports the server had already applied.
        retries: Send attempts after a retryable failure.
        late: Reports whose selection had already closed (see ``on_closed``).
        failed: Reports that could not be delivered.
    """

    enqueued: int = 0
    delivered: int = 0
    duplicates: int = 0
    retries: int = 0
    late: int = 0
    failed: int = 0


_STOP = object()


class OutcomeReporter:
    """Sends outcome reports from a background thread so the training step never waits on the network.

    Reports go into a bounded FIFO queue and are sent in order by one thread.
    A report that fails with a retryable error (UNAVAILABLE, DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED) is sent again with the *same* request id, so the
    server applies it exactly once, with exponential backoff, up to
    ``max_attempts`` attempts (0 = until it is delivered or the reporter is
    closed with a deadline).

    Nothing is dropped silently:

    * When the queue is full, `report` blocks until there is room (default),
      or raises `ReportQueueFull` after ``put_timeout`` seconds / at once
      with ``block=False``.
    * A report that cannot be delivered is kept in `failed`, and the next
      `report`, `flush` or `close` raises `ReportFailedError` carrying it.
    * A report for a selection that closed in the meantime (its wait window
      expired) is, by ``on_closed``: ``"warn"`` logged and counted in
      ``stats.late``; ``"standalone"`` resent as a standalone step; ``"raise"``
      treated as a failure.

    Args:
        client: Connected client (the reporter does not close it).
        pool: Pool name.
        mode: How rewards become evidence in `report_rewards`.
        threshold: Success threshold for ``mode="threshold"``.
        max_pending: Queue capacity, in reports.
        block: Whether `report` waits for room when the queue is full.
        put_timeout: Longest wait for room, in seconds (None = forever).
        max_attempts: Send attempts per report; 0 = unlimited.
        backoff: First retry delay in seconds (doubles up to ``max_backoff``).
        max_backoff: Longest retry delay in seconds.
        on_closed: What to do with a report whose selection is already closed.
        request_id_prefix: Prefix of generated request ids (e.g. run id and rank).
    """

    def __init__(
        self,
        client: SelectorClient,
        pool: str,
        *,
        mode: RewardMode | str = RewardMode.BINARY,
        threshold: float = 0.5,
        max_pending: int = 256,
        block: bool = True,
        put_timeout: float | None = None,
        max_attempts: int = 10,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        on_closed: str = "warn",
        request_id_prefix: str = "",
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
        if on_closed not in ("warn", "standalone", "raise"):
            raise ValueError(
                f"on_closed must be 'warn', 'standalone' or 'raise', got {on_closed!r}"
            )
        self.client = client
        self.pool = pool
        self.mode = RewardMode(mode)
        self.threshold = threshold
        self.block = block
        self.put_timeout = put_timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_closed = on_closed
        self.request_id_prefix = request_id_prefix
        self.stats = ReporterStats()
        self.failed: list[PendingReport] = []
        self.delivered: list[PendingReport] = []
        """The last delivered reports (up to 1000), oldest first."""
        self._raised = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._closed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bots-reporter", daemon=True)
        self._thread.start()

    # --- public API --------------------------------------------------------------

    def report(
        self,
        outcomes: Iterable[Outcome | tuple[str, float, float]] | Mapping[str, tuple[float, float]],
        *,
        selection_id: str = "",
        final: bool = False,
        request_id: str | None = None,
    ) -> str:
        """Queues evidence for sending and returns at once (unless the queue is full).

        Args:
            outcomes: `Outcome` objects, (key, successes, trials) tuples or key -> (s, t).
            selection_id: The selection the evidence belongs to; "" = standalone step.
            final: Close the selection after this report.
            request_id: Idempotency key; generated when None. Pass a deterministic one
                (e.g. ``f"{run_id}-{step}-{rank}"``) to make resends after a restart safe.

        Returns:
            The request id.

        Raises:
            ReportFailedError: An earlier report could not be delivered.
            ReportQueueFull: No room in the queue (see ``block``/``put_timeout``).
            RuntimeError: The reporter is closed.
        """
        self._raise_failures()
        if self._closed:
            raise RuntimeError("the reporter is closed")
        items = _coerce(outcomes)
        rid = request_id or f"{self.request_id_prefix}{uuid.uuid4().hex}"
        pending = PendingReport(rid, items, selection_id, final)
        try:
            self._queue.put(pending, block=self.block, timeout=self.put_timeout)
        except queue.Full:
            raise ReportQueueFull(
                f"{self._queue.maxsize} reports are waiting to be sent; the server is "
                "slow or unreachable"
            ) from None
        with self._lock:
            self.stats.enqueued += 1
        return rid

    def report_rewards(
        self,
        task_keys: Sequence[str],
        rewards: Sequence[float],
        *,
        selection_id: str = "",
        final: bool = False,
        request_id: str | None = None,
    ) -> str:
        """Groups per-rollout rewards by task (see `group_rewards`) and queues them.

        Returns:
            The request id ("" when no rollout had a reward and nothing was queued).
        """
        outcomes = group_rewards(task_keys, rewards, mode=self.mode, threshold=self.threshold)
        if not outcomes:
            return ""
        return self.report(outcomes, selection_id=selection_id, final=final, request_id=request_id)

    @property
    def pending(self) -> int:
        """Reports queued or being sent."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every queued report was delivered or failed.

        Raises:
            TimeoutError: Reports were still pending after ``timeout`` seconds.
            ReportFailedError: A report could not be delivered.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"{self._queue.unfinished_tasks} report(s) still pending after {timeout}s"
                    )
                self._queue.all_tasks_done.wait(left)
        self._raise_failures()

    def close(self, timeout: float | None = None) -> None:
        """Flushes (waiting up to ``timeout`` seconds), then stops the thread.

        Reports still pending at the deadline are moved to `failed` and raised.

        Raises:
            ReportFailedError: Some report was not delivered.
        """
        if self._closed:
            self._raise_failures()
            return
        self._closed = True
        try:
            self.flush(timeout)
        except TimeoutError:
            pass
        finally:
            self._stopping.set()
            self._put_stop()
            self._thread.join(timeout=30)
            self._drain_unsent()
        self._raise_failures()

    def __enter__(self) -> OutcomeReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Keep the original exception; still try to deliver what is queued.
        try:
            self.close()
        except ReportFailedError as err:
            log.error("while handling %r: %s", exc, err)

    # --- internals ---------------------------------------------------------------

    def _put_stop(self) -> None:
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    return

    def _drain_unsent(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, PendingReport):
                item.error = TimeoutError("reporter closed before the report was delivered")
                self._fail(item)
            self._queue.task_done()

    def _raise_failures(self) -> None:
        with self._lock:
            new = self.failed[self._raised :]
            self._raised = len(self.failed)
        if new:
            raise ReportFailedError(new)

    def _fail(self, item: PendingReport) -> None:
        log.error(
            "report %s (selection %r) not delivered: %r",
            item.request_id,
            item.selection_id,
            item.error,
        )
        with self._lock:
            self.failed.append(item)
            self.stats.failed += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._send(item)
            finally:
                self._queue.task_done()

    def _send(self, item: PendingReport) -> None:
        delay = self.backoff
        while True:
            item.attempts += 1
            try:
                result = self.client.report_outcomes(
                    self.pool,
                    list(item.outcomes),
                    selection_id=item.selection_id,
                    final=item.final,
                    request_id=item.request_id,
                )
            except _RETRYABLE as err:
                out_of_attempts = self.max_attempts and item.attempts >= self.max_attempts
                if out_of_attempts or self._stopping.is_set():
                    item.error = err
                    self._fail(item)
                    return
                with self._lock:
                    self.stats.retries += 1
                log.warning("report %s: %s; retrying in %.1fs", item.request_id, err, delay)
                if self._stopping.wait(delay):
                    item.error = err
                    self._fail(item)
                    return
                delay = min(self.max_backoff, delay * 2)
                continue
            except ConflictError as err:
                if item.selection_id and "already closed" in (err.details or ""):
                    self._late(item, err)
                else:
                    item.error = err
                    self._fail(item)
                return
            except BotsError as err:
                item.error = err
                self._fail(item)
                return
            except Exception as err:  # a bug or a broken client must not kill the thread silently
                item.error = err
                self._fail(item)
                return
            item.result = result
            with self._lock:
                self.stats.delivered += 1
                self.stats.duplicates += int(result.duplicate)
                self.delivered.append(item)
                del self.delivered[:-1000]
            return

    def _late(self, item: PendingReport, err: ConflictError) -> None:
        with self._lock:
            self.stats.late += 1
        if self.on_closed == "raise":
            item.error = err
            self._fail(item)
        elif self.on_closed == "standalone":
            # A new request id: the payload differs (no selection), so it is a new report.
            late = PendingReport(item.request_id + "-late", item.outcomes, "", False)
            self._send(late)
        else:
            log.warning(
                "selection %s closed before report %s arrived; its %d outcome(s) were not "
                "applied (on_closed='warn')",
                item.selection_id,
                item.request_id,
                len(item.outcomes),
            )


def _coerce(
    outcomes: Iterable[Outcome | tuple[str, float, float]] | Mapping[str, tuple[float, float]],
) -> tuple[Outcome, ...]:
    if isinstance(outcomes, Mapping):
        return tuple(Outcome(str(k), float(s), float(t)) for k, (s, t) in outcomes.items())
    out: list[Outcome] = []
    for o in outcomes:
        if isinstance(o, Outcome):
            out.append(o)
        else:
            key, s, t = o
            out.append(Outcome(str(key), float(s), float(t)))
    return tuple(out)

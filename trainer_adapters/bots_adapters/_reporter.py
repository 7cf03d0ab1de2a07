"""Background sender of outcome reports: bounded queue, retries with one request id, an outage spool."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from bots_client import (
    BotsError,
    ConflictError,
    NotFoundError,
    Outcome,
    OverloadedError,
    ReportResult,
    SelectorClient,
    UnavailableError,
)

from bots_adapters._outcomes import RewardMode, group_rewards
from bots_adapters._spool import ReportSpool, SpooledReport

log = logging.getLogger("bots_adapters.reporter")

_RETRYABLE = (UnavailableError, OverloadedError)

KEEP_TRAINING = "keep_training"
FAIL_FAST = "fail_fast"
OUTAGE_POLICIES = (KEEP_TRAINING, FAIL_FAST)


def check_outage_policy(on_outage: str) -> str:
    """Returns ``on_outage`` if it names a policy.

    Raises:
        ValueError: Anything but ``"keep_training"`` or ``"fail_fast"``.
    """
    if on_outage not in OUTAGE_POLICIES:
        raise ValueError(f"on_outage must be 'keep_training' or 'fail_fast', got {on_outage!r}")
    return on_outage


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
        delivered: Reports the server acknowledged (duplicates and replays included).
        duplicates: Acknowledged reports the server had already applied.
        retries: Send attempts after a retryable failure.
        late: Reports whose selection had already closed or was unknown (see ``on_closed``).
        failed: Reports that could not be delivered.
        outages: Times the reporter entered degraded mode (service unreachable).
        spooled: Reports written to the spool file while the service was unreachable.
        replayed: Spooled reports the service took after it came back.
        degraded_batches: Batches a sampler made locally during an outage (counted
            here by samplers given this reporter).
    """

    enqueued: int = 0
    delivered: int = 0
    duplicates: int = 0
    retries: int = 0
    late: int = 0
    failed: int = 0
    outages: int = 0
    spooled: int = 0
    replayed: int = 0
    degraded_batches: int = 0


_STOP = object()


class OutcomeReporter:
    """Sends outcome reports from a background thread so the training step never waits on the network.

    Reports go into a bounded FIFO queue and are sent in order by one thread.
    A report that fails with a retryable error (UNAVAILABLE, DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED) is sent again with the *same* request id, so the
    server applies it exactly once, with exponential backoff.

    **Outages** (``on_outage``):

    * ``"keep_training"`` (default): a report still undelivered after
      ``max_attempts`` attempts or ``outage_after`` seconds is written to a
      durable spool file (``spool_path``) and the reporter enters *degraded
      mode* (logged once, counted in ``stats.outages``): later reports go
      straight to the spool, and every ``probe_interval`` seconds the thread
      replays the spool, oldest first, each report with its **original**
      request id. The first replay that gets through leaves degraded mode
      (logged). The service recognises a report it had already applied
      (``duplicate=True``), so nothing counts twice; a spooled report whose
      selection closed meanwhile (or is unknown to a restarted service) is
      sent as a standalone step under the request id ``<original>-late``, so a
      replay interrupted and repeated cannot apply it twice either. Reports
      still spooled at `close` stay in the file and are replayed by the next
      reporter opened on the same ``spool_path``. Training never blocks on
      the service: with the queue full, `report` spools directly. Only a spent
      disk budget (``spool_max_bytes``) raises, as `SpoolFullError`.
    * ``"fail_fast"``: no spool. A report that cannot be delivered within
      ``max_attempts`` attempts (0 = until closed) is kept in `failed` and
      raised as `ReportFailedError` by the next `report`, `flush` or `close`;
      with the queue full, `report` blocks (``block=True``) or raises
      `ReportQueueFull`.

    A report for a selection that closed in the meantime (its wait window,
    the pool's ``selection_wait_seconds``, expired) is, by ``on_closed``:
    ``"standalone"`` (default) resent as a standalone step, so its evidence
    is still applied; ``"warn"`` logged and counted in ``stats.late``, its
    evidence not applied; ``"raise"`` treated as a failure.

    Args:
        client: Connected client (the reporter does not close it).
        pool: Pool name.
        mode: How rewards become evidence in `report_rewards`.
        threshold: Success threshold for ``mode="threshold"``.
        max_pending: Queue capacity, in reports.
        block: Whether `report` waits for room when the queue is full (``"fail_fast"``).
        put_timeout: Longest wait for room, in seconds (None = forever).
        max_attempts: Send attempts per report; 0 = unlimited (``"keep_training"``
            then spools after ``outage_after`` seconds).
        backoff: First retry delay in seconds (doubles up to ``max_backoff``).
        max_backoff: Longest retry delay in seconds.
        on_closed: What to do with a report whose selection is already closed.
        request_id_prefix: Prefix of generated request ids (e.g. run id and rank).
        on_outage: ``"keep_training"`` or ``"fail_fast"`` (see above).
        spool_path: The spool file; default ``<tmp>/bots-spool/<pool>-<prefix or pid>.jsonl``.
            Give each rank its own path, the same across restarts of the run.
        spool_max_bytes: Disk budget of the spool file.
        outage_after: Seconds a report may keep failing before it is spooled.
        probe_interval: Seconds between replay attempts in degraded mode.
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
        on_closed: str = "standalone",
        request_id_prefix: str = "",
        on_outage: str = KEEP_TRAINING,
        spool_path: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 64 * 1024 * 1024,
        outage_after: float = 30.0,
        probe_interval: float = 5.0,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
        if on_closed not in ("warn", "standalone", "raise"):
            raise ValueError(
                f"on_closed must be 'warn', 'standalone' or 'raise', got {on_closed!r}"
            )
        if not probe_interval > 0 or not outage_after > 0:
            raise ValueError("probe_interval and outage_after must be > 0 seconds")
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
        self.on_outage = check_outage_policy(on_outage)
        self.outage_after = outage_after
        self.probe_interval = probe_interval
        self.stats = ReporterStats()
        self.failed: list[PendingReport] = []
        self.delivered: list[PendingReport] = []
        """The last delivered reports (up to 1000), oldest first."""
        self.spool: ReportSpool | None = None
        if self.on_outage == KEEP_TRAINING:
            self.spool = ReportSpool(
                spool_path or _default_spool_path(pool, request_id_prefix), spool_max_bytes
            )
        self._degraded = False
        self._last_probe = 0.0
        self._raised = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = False
        self._stopping = threading.Event()
        if self.spool is not None and len(self.spool):
            log.warning(
                "%d report(s) left in the spool %s by an earlier run; replaying them",
                len(self.spool),
                self.spool.path,
            )
        self._thread = threading.Thread(target=self._run, name="bots-reporter", daemon=True)
        self._thread.start()

    # --- public API --------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while the service is unreachable and reports go to the spool."""
        return self._degraded

    def count_degraded_batch(self) -> None:
        """Counts a batch a sampler made locally during an outage (``stats.degraded_batches``)."""
        with self._lock:
            self.stats.degraded_batches += 1

    def report(
        self,
        outcomes: Iterable[Outcome | tuple[str, float, float]] | Mapping[str, tuple[float, float]],
        *,
        selection_id: str = "",
        final: bool = False,
        request_id: str | None = None,
    ) -> str:
        """Queues evidence for sending and returns at once.

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
            ReportQueueFull: No room in the queue (``"fail_fast"``, see ``block``/``put_timeout``).
            SpoolFullError: The queue is full and the spool's disk budget is spent.
            RuntimeError: The reporter is closed.
        """
        self._raise_failures()
        if self._closed:
            raise RuntimeError("the reporter is closed")
        items = _coerce(outcomes)
        rid = request_id or f"{self.request_id_prefix}{uuid.uuid4().hex}"
        pending = PendingReport(rid, items, selection_id, final)
        if self.spool is not None:
            # keep_training: never block the training step on the service.
            try:
                self._queue.put_nowait(pending)
            except queue.Full:
                self._spool_item(pending)
        else:
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
        """Reports queued or being sent (spooled reports not included)."""
        return self._queue.unfinished_tasks

    @property
    def spooled(self) -> int:
        """Reports waiting in the spool file for the service to come back."""
        return len(self.spool) if self.spool is not None else 0

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every queued report was delivered, spooled or failed.

        Raises:
            TimeoutError: Reports were still pending after ``timeout`` seconds.
            ReportFailedError: A report could not be delivered.
        """
        self._wait(timeout)
        self._raise_failures()

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"{self._queue.unfinished_tasks} report(s) still pending after {timeout}s"
                    )
                self._queue.all_tasks_done.wait(left)

    def replay(self) -> bool:
        """Sends the spooled reports now (one pass, each with its original request id).

        Returns:
            True when the spool is empty afterwards.
        """
        with self._send_lock:
            return self._replay(force=True)

    def close(self, timeout: float | None = None) -> None:
        """Flushes (waiting up to ``timeout`` seconds), replays the spool, stops the thread.

        Reports still queued at the deadline are spooled (``"keep_training"``)
        or moved to `failed` and raised (``"fail_fast"``). The spool is then
        replayed: once when ``timeout`` is None, else every ``probe_interval``
        seconds until it is empty or ``timeout`` is spent. Reports the service
        could not take stay in the spool file for the next reporter on it.

        Raises:
            ReportFailedError: Some report was not delivered (and not spooled).
        """
        if self._closed:
            self._raise_failures()
            return
        self._closed = True
        try:
            self._wait(timeout)
        except TimeoutError:
            pass
        finally:
            self._stopping.set()
            self._put_stop()
            self._thread.join(timeout=30)
            self._drain_unsent()
        if self.spool is not None and len(self.spool):
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self.replay() and deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(self.probe_interval, left))
            if len(self.spool):
                log.warning(
                    "the selector service is still unreachable: %d report(s) stay in %s and "
                    "are replayed by the next reporter on that spool_path",
                    len(self.spool),
                    self.spool.path,
                )
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
                if self.spool is not None:
                    self._spool_item(item)
                else:
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

    def _spool_item(self, item: PendingReport) -> None:
        assert self.spool is not None
        self.spool.add(SpooledReport(item.request_id, item.outcomes, item.selection_id, item.final))
        with self._lock:
            self.stats.spooled += 1

    def _enter_degraded(self, err: BaseException) -> None:
        self._last_probe = time.monotonic()
        if self._degraded:
            return
        self._degraded = True
        with self._lock:
            self.stats.outages += 1
        assert self.spool is not None
        log.warning(
            "selector service unreachable (%s): reporter entering degraded mode; reports are "
            "spooled to %s and replayed when it is back",
            err,
            self.spool.path,
        )

    def _leave_degraded(self, replayed: int) -> None:
        if self._degraded:
            self._degraded = False
            log.warning(
                "selector service reachable again: replayed %d spooled report(s); reporter "
                "leaving degraded mode",
                replayed,
            )

    def _run(self) -> None:
        while True:
            waiting = self.spool is not None and (self._degraded or len(self.spool) > 0)
            try:
                item = self._queue.get(timeout=self.probe_interval if waiting else None)
            except queue.Empty:
                with self._send_lock:
                    self._replay()
                continue
            try:
                if item is _STOP:
                    return
                with self._send_lock:
                    if self.spool is not None and len(self.spool):
                        self._replay()
                    if self._degraded:
                        self._spool_item(item)
                    else:
                        self._send(item)
            except Exception as err:  # e.g. SpoolFullError: raised by the next report()
                item.error = err
                self._fail(item)
            finally:
                self._queue.task_done()

    def _replay(self, force: bool = False) -> bool:
        """One pass over the spool (rate-limited by ``probe_interval`` while degraded)."""
        spool = self.spool
        if spool is None or not len(spool):
            return True
        recent = time.monotonic() - self._last_probe < self.probe_interval
        if self._degraded and recent and not force:
            return False
        self._last_probe = time.monotonic()
        count = 0
        for rep in spool.pending():
            item = PendingReport(rep.request_id, rep.outcomes, rep.selection_id, rep.final)
            try:
                self._deliver(item)
            except _RETRYABLE as err:
                self._enter_degraded(err)
                return False
            except BotsError as err:
                item.error = err
                self._fail(item)
            except Exception as err:  # e.g. a closed channel: keep it spooled, try again later
                log.error("replaying report %s failed: %r", rep.request_id, err)
                self._enter_degraded(err)
                return False
            else:
                count += 1
                with self._lock:
                    self.stats.replayed += 1
            spool.done([rep.request_id])
        self._leave_degraded(count)
        return True

    def _deliver(self, item: PendingReport) -> None:
        """One send (the client retries inside it); a closed or unknown selection goes standalone.

        Raises:
            UnavailableError, OverloadedError: The service could not take it.
            BotsError: Any other refusal.
        """
        item.attempts += 1
        try:
            result = self.client.report_outcomes(
                self.pool,
                list(item.outcomes),
                selection_id=item.selection_id,
                final=item.final,
                request_id=item.request_id,
            )
        except (ConflictError, NotFoundError) as err:
            if not _selection_gone(item, err):
                raise
            with self._lock:
                self.stats.late += 1
            if self.on_closed == "raise":
                raise
            if self.on_closed == "warn":
                log.warning(
                    "selection %s closed before report %s arrived; its %d outcome(s) were not "
                    "applied (on_closed='warn')",
                    item.selection_id,
                    item.request_id,
                    len(item.outcomes),
                )
                return
            # The payload differs (no selection), so the late copy has its own request id;
            # a fixed suffix keeps a repeated replay of it idempotent too.
            result = self.client.report_outcomes(
                self.pool, list(item.outcomes), request_id=_late_id(item.request_id)
            )
        item.result = result
        with self._lock:
            self.stats.delivered += 1
            self.stats.duplicates += int(result.duplicate)
            self.delivered.append(item)
            del self.delivered[:-1000]

    def _send(self, item: PendingReport) -> None:
        delay = self.backoff
        first = time.monotonic()
        while True:
            try:
                self._deliver(item)
                return
            except _RETRYABLE as err:
                out_of_attempts = self.max_attempts and item.attempts >= self.max_attempts
                if self.spool is not None:
                    if (
                        out_of_attempts
                        or self._stopping.is_set()
                        or time.monotonic() - first >= self.outage_after
                    ):
                        self._spool_item(item)
                        self._enter_degraded(err)
                        return
                elif out_of_attempts or self._stopping.is_set():
                    item.error = err
                    self._fail(item)
                    return
                with self._lock:
                    self.stats.retries += 1
                log.warning("report %s: %s; retrying in %.1fs", item.request_id, err, delay)
                if self._stopping.wait(delay) and self.spool is None:
                    item.error = err
                    self._fail(item)
                    return
                delay = min(self.max_backoff, delay * 2)
            except Exception as err:  # a refusal, a bug or a broken client: not silently
                item.error = err
                self._fail(item)
                return


def _selection_gone(item: PendingReport, err: BotsError) -> bool:
    """True for "selection closed" (FAILED_PRECONDITION) or "selection not found" answers."""
    if not item.selection_id:
        return False
    details = err.details or ""
    if isinstance(err, NotFoundError):
        return details.startswith("selection ")
    return "already closed" in details


def _late_id(request_id: str) -> str:
    suffix = "-late"
    return request_id[: 128 - len(suffix)] + suffix


def _default_spool_path(pool: str, prefix: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix.strip("-")) or f"pid{os.getpid()}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", pool)
    return os.path.join(tempfile.gettempdir(), "bots-spool", f"{name}-{tag}.jsonl")


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

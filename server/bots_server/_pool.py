"""The pool runtime: the one place where the service rules of a pool live.

A pool is an engine state (``bots_core.PoolState``) plus what the service
adds around it (docs/algorithm.md §5): selections and their lifecycle
(open, partial, final, expiry, discard), replay of (run id, step), request-id
deduplication, and retention. Both stores run this same code; a store only
keeps the ordered log of records (``bots_server._records``) and checkpoints.

A request is first *planned*: validated against the current state, which is
not touched, into one record (or into the answer of an earlier request, for a
replay or a duplicate). The store makes the record durable at the next
sequence number and only then *applies* it. Applying the same records in the
same order rebuilds the same runtime, on any replica and after any restart.

Steps (closed selections, standalone reports) are applied to the posteriors
lazily: bookkeeping is immediate, the O(pool) update of Eq. 1 runs when the
posteriors are next needed (a draw, stats, a checkpoint) or when many steps
are waiting. Order is kept, so the result is the same as applying at once;
reports stay cheap, and a Redis replica that only takes reports does not
spend its time on posteriors nobody reads yet.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bots_core import (
    ACTIVE_STEPS,
    DEFAULT_ESTIMATOR,
    MAX_TRIALS,
    EmbeddingBasis,
    EstimatorState,
    Evidence,
    InvalidInputError,
    PoolEstimator,
    PoolState,
    RunState,
    TaskConflictError,
    TaskSpec,
    aggregate,
    apply_step,
    check_counts,
    check_graph_size,
    estimator_at,
    needs_estimator,
    restore,
    run_offset,
    select_batch,
)

from bots_server._columns import columns_of
from bots_server._errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    short,
)
from bots_server._model import (
    OutcomeIn,
    PoolStats,
    ReportAck,
    RunStats,
    SelectionState,
    SelectionView,
    engine_stats,
)
from bots_server._records import (
    AddTasks,
    Expire,
    F32Array,
    FloatArray,
    IntArray,
    OpenSelection,
    Record,
    Report,
)

POOL_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
# Request ids the client makes: creation time (ms since the epoch, 12 hex digits), '-', uuid4.
TIMED_REQUEST_ID = re.compile(r"^([0-9a-f]{12})-[0-9a-f]{32}$")
MAX_RUN_ID = 256
MAX_REQUEST_ID = 128
# Steps waiting for the posteriors before they are applied anyway (bounds their memory).
MAX_PENDING_STEPS = 4096


@dataclass(frozen=True)
class Retention:
    """What a pool remembers of its past, and its limits; one policy for every store.

    Time-based limits are measured on the records' own clock (the time the
    newest record was made), so every replica forgets the same things at the
    same record. Every replica of a Redis deployment must use the same values.

    Attributes:
        closed_selections: Closed selections kept for (run id, step) replay and
            for answering late reports precisely.
        selection_seconds: ... and for at most this long after they closed.
        request_ids: Request ids of standalone reports kept for deduplication.
        request_seconds: ... and for at most this long. (Request ids of reports
            that name a selection are kept exactly as long as the selection.)
        max_open_selections: Open selections a pool holds at most.
    """

    closed_selections: int = 4096
    selection_seconds: float = 86400.0
    request_ids: int = 100_000
    request_seconds: float = 7 * 86400.0
    max_open_selections: int = 4096

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"retention {f.name} must be > 0")


def check_pool_name(name: str) -> None:
    """Raises InvalidArgument for a name that is not 1..128 of [A-Za-z0-9._-]."""
    if not POOL_NAME.match(name):
        raise InvalidArgument(
            f"pool name {short(name)} is invalid: use 1..128 characters from "
            "[A-Za-z0-9._-], not starting with '.'"
        )


MAX_WAIT_SECONDS = 30 * 86400.0


def check_select_args(run_id: str, expected_trials: float, wait_seconds: float = 0.0) -> None:
    """Validates the state-free arguments of SelectBatch."""
    if not (math.isfinite(wait_seconds) and 0 <= wait_seconds <= MAX_WAIT_SECONDS):
        raise InvalidArgument(
            f"wait_seconds must be in [0, {MAX_WAIT_SECONDS:g}] (0 = the pool's "
            f"selection_wait_seconds), got {wait_seconds}"
        )
    if len(run_id) > MAX_RUN_ID:
        raise InvalidArgument(f"run_id is longer than {MAX_RUN_ID} characters")
    if not (math.isfinite(expected_trials) and 0 <= expected_trials <= MAX_TRIALS):
        raise InvalidArgument(
            f"expected_trials must be finite and in [0, {MAX_TRIALS:g}], got {expected_trials}"
        )


def check_report_args(
    request_id: str, selection_id: str, outcomes: Sequence[OutcomeIn], final: bool
) -> None:
    """Validates the state-free arguments of ReportOutcomes."""
    if not 1 <= len(request_id) <= MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id must be 1..{MAX_REQUEST_ID} characters")
    if outcomes:
        succ = np.fromiter((o.successes for o in outcomes), np.float64, len(outcomes))
        tri = np.fromiter((o.trials for o in outcomes), np.float64, len(outcomes))
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(succ) & np.isfinite(tri) & (tri > 0) & (tri <= MAX_TRIALS))
            bad |= ~((succ >= 0) & (succ <= tri))
        if bad.any():
            o = outcomes[int(np.argmax(bad))]
            check_counts(o.task_key, o.successes, o.trials)  # raises with the precise reason
    if not selection_id and not outcomes:
        raise InvalidArgument("a report without a selection_id needs at least one outcome")
    if not outcomes and not final:
        raise InvalidArgument("empty report: give outcomes, or final=true to close the selection")


def request_time(request_id: str) -> float | None:
    """When a client-made request id was made (seconds), or None for other ids."""
    m = TIMED_REQUEST_ID.match(request_id)
    return int(m.group(1), 16) / 1000.0 if m else None


def payload_digest(
    selection_id: str, outcomes: Sequence[OutcomeIn], final: bool, run_id: str = ""
) -> str:
    """Digest of a report's payload, to tell a retry from a reused request id."""
    payload = json.dumps(
        [selection_id, [[o.task_key, o.successes, o.trials] for o in outcomes], final, run_id],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Selection:
    """A selection as the runtime keeps it (immutable: a report makes a new one).

    ``successes``/``trials`` accumulate the evidence while it is open (per
    position in the batch); a closed selection keeps only what replay needs.
    """

    opened: OpenSelection
    successes: FloatArray | None
    trials: FloatArray | None
    closed_at: float = math.nan
    requests: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        return self.opened.number


@dataclass(frozen=True)
class RequestMemo:
    """What a request id was used for, to answer its retries."""

    digest: str
    ack: ReportAck
    selection: int
    time: float


class PoolRuntime:
    """A pool's engine state plus its selections and memory (not thread-safe)."""

    def __init__(self, state: PoolState, incarnation: str, retention: Retention) -> None:
        self._state = state
        self.incarnation = incarnation
        self.retention = retention
        self.seq = 0  # sequence number of the last applied record
        self.now = 0.0  # newest record time applied
        self.open: dict[int, Selection] = {}
        self.closed: collections.OrderedDict[int, Selection] = collections.OrderedDict()
        self.by_run: dict[tuple[str, int], int] = {}
        # Step range (lo, hi) of each run's selections that retention forgot.
        self.forgotten_runs: dict[str, tuple[int, int]] = {}
        self.standalone: collections.OrderedDict[str, RequestMemo] = collections.OrderedDict()
        self.bound: dict[str, RequestMemo] = {}
        self.selections_expired = 0
        # Standalone request ids made at or before this time may have been forgotten.
        self.dedup_floor = 0.0
        self.pending: list[tuple[Evidence, str]] = []  # (evidence, run) of steps not applied yet
        self.run_seen: dict[str, tuple[float, float]] = {}  # run -> (first, last) record time
        # Sorted indices and their batch positions, per open selection (not persisted).
        self._members: dict[int, tuple[IntArray, IntArray]] = {}
        # The similarity estimator of a pool that uses one (bots_core._pool_estimator),
        # or its state as a checkpoint held it, until a step needs the graph built.
        self.estimator: PoolEstimator | None = None
        self.estimator_saved: EstimatorState | None = None

    # ------------------------------------------------------------ accessors
    @property
    def name(self) -> str:
        return self._state.name

    @property
    def tasks(self) -> PoolState:
        """The engine state for its task table only (posteriors may lag, see :meth:`engine`)."""
        return self._state

    def engine(self) -> PoolState:
        """The engine state with every logged step applied."""
        self.apply_pending(len(self.pending))
        return self._state

    def apply_pending(self, steps: int) -> int:
        """Applies up to ``steps`` of the waiting steps, oldest first; returns how many remain."""
        done = 0
        while done < steps and self.pending:
            ev, run = self.pending[0]
            apply_step(self._state, ev, self._estimator() or DEFAULT_ESTIMATOR, run=run)
            self.pending.pop(0)
            done += 1
        return len(self.pending)

    def _estimator(self) -> PoolEstimator | None:
        """The estimator the next step applies with (built or rebuilt over every task if due)."""
        if self.estimator is None and self.estimator_saved is not None:
            self.estimator = restore(self._state, self.estimator_saved)
            self.estimator_saved = None
        self.estimator = estimator_at(self._state, self.estimator)
        return self.estimator

    def estimator_state(self) -> EstimatorState | None:
        """A copy of the estimator's state for a checkpoint (None when it has none yet)."""
        return self.estimator.to_state() if self.estimator is not None else self.estimator_saved

    @property
    def steps_applied(self) -> int:
        return self._state.steps_applied + len(self.pending)

    def selection_id(self, number: int) -> str:
        return f"{self.incarnation}-{number}"

    def next_deadline(self, *, without: int = -1) -> float:
        """The earliest deadline of an open selection (inf when none is open)."""
        return min(
            (s.opened.deadline for n, s in self.open.items() if n != without), default=math.inf
        )

    def deadline_after(self, record: Record) -> float:
        """What :meth:`next_deadline` will be once ``record`` is applied (not applying it)."""
        if isinstance(record, OpenSelection):
            return min(self.next_deadline(), record.deadline)
        if isinstance(record, Expire):
            return self.next_deadline(without=record.selection)
        if isinstance(record, Report) and record.selection >= 0:
            sel = self.open[record.selection]
            if self._closes(sel, record):
                return self.next_deadline(without=record.selection)
        return self.next_deadline()

    # ------------------------------------------------------------ planning
    def plan_add(
        self,
        specs: Sequence[TaskSpec],
        max_tasks: int,
        now: float,
        embeddings: F32Array | None = None,
    ) -> AddTasks | None:
        """The record that adds the new ones of ``specs``, None when every key exists already.

        ``embeddings`` are the specs' rows (validated by ``check_embeddings``),
        or None. A key already in the pool is skipped, as long as its
        reference rates, prior and embedding are the ones it has (a retried
        request); otherwise TaskConflictError.
        """
        fresh = self._state.plan_add(specs)
        if embeddings is not None:
            self._check_known_embeddings(specs, embeddings)
        if not fresh:
            return None
        total = self._state.task_count + len(fresh)
        if total > max_tasks:
            raise ResourceExhausted(
                f"pool {short(self.name)} would hold {total} tasks; the limit is {max_tasks}"
            )
        cols = columns_of(fresh)
        if needs_estimator(self._state.config):
            try:
                check_graph_size(total)
            except InvalidInputError as exc:
                raise FailedPrecondition(str(exc)) from None
        if embeddings is None:
            self._check_without_embeddings()
            return AddTasks(now, cols)
        basis = self._state.embedding_basis
        if basis is None and self._state.task_count:
            raise FailedPrecondition(
                f"pool {short(self.name)} holds tasks without embeddings: a pool's tasks have "
                "embeddings all or none (create a new pool to use them)"
            )
        first: dict[str, int] = {}
        for j, spec in enumerate(specs):
            first.setdefault(spec.key, j)
        rows = embeddings[[first[s.key] for s in fresh]]
        new = EmbeddingBasis.fit(rows) if basis is None else None
        cols.embedding = (basis or new).codes(rows)  # type: ignore[union-attr]
        return AddTasks(now, cols, new)

    def _check_known_embeddings(self, specs: Sequence[TaskSpec], embeddings: F32Array) -> None:
        """Raises when the embedding of a key the pool holds is not the one it has.

        Compared as the pool's int8 codes, one unit apart allowed: the
        projection's float rounding may differ with the batch it is in.

        Raises:
            FailedPrecondition: embeddings of a dimension the pool does not take.
            TaskConflictError: a known key with another embedding.
        """
        st = self._state
        basis, codes = st.embedding_basis, st.embedding_codes
        if basis is None or codes is None:
            return  # checked with the new tasks, if there are any
        if embeddings.shape[1] != basis.dim_in:
            raise FailedPrecondition(
                f"pool {short(self.name)} takes embeddings of dimension {basis.dim_in}, "
                f"got {embeddings.shape[1]}"
            )
        where = st.index.lookup([s.key for s in specs])
        known = np.flatnonzero(where >= 0)
        if not len(known):
            return
        sent = basis.codes(embeddings[known]).astype(np.int16)
        held = codes[where[known]].astype(np.int16)
        bad = np.flatnonzero(np.abs(sent - held).max(axis=1) > 1)
        if len(bad):
            key = specs[int(known[bad[0]])].key
            raise TaskConflictError(
                f"task {short(key)} already exists in pool {short(self.name)} with a different "
                "embedding"
            )

    def _check_without_embeddings(self) -> None:
        """FailedPrecondition when the pool needs embeddings for the tasks being added."""
        st = self._state
        if needs_estimator(st.config):
            raise FailedPrecondition(
                f"estimator {st.config.estimator.value!r} needs task embeddings: give every task "
                "one (bots embed writes them into a task file; docs/similarity.md)"
            )
        if st.embedding_basis is not None:
            raise FailedPrecondition(
                f"pool {short(self.name)} holds tasks with embeddings: a pool's tasks have "
                "embeddings all or none"
            )

    def add_columns(self, record: AddTasks) -> None:
        """Appends the record's tasks (and the pool's embedding basis, when it brings one)."""
        c = record.tasks
        # Pending steps predate these tasks: apply them before the table grows.
        state = self.engine()
        if record.basis is not None:
            state.embedding_basis = record.basis
        state.extend_columns(c.keys, c.weak, c.strong, c.prior_alpha, c.prior_beta, c.embedding)

    def plan_select(
        self,
        batch_size: int,
        run_id: str,
        step: int,
        expected_trials: float,
        now: float,
        wait_seconds: float = 0.0,
    ) -> OpenSelection | SelectionView:
        """The record of a new draw, or the view of the earlier draw of (run_id, step)."""
        check_select_args(run_id, expected_trials, wait_seconds)
        expected = expected_trials or self._state.config.pseudo_rollouts
        if run_id:
            number = self.by_run.get((run_id, step))
            if number is not None:
                sel = self.open.get(number) or self.closed[number]
                if len(sel.opened.indices) != batch_size or sel.opened.expected_trials != expected:
                    raise AlreadyExists(
                        f"run {short(run_id)} step {step} was already selected with batch_size "
                        f"{len(sel.opened.indices)} and expected_trials "
                        f"{sel.opened.expected_trials}"
                    )
                return self.view(sel, replayed=True)
            lo_hi = self.forgotten_runs.get(run_id)
            if lo_hi is not None and lo_hi[0] <= step <= lo_hi[1]:
                raise FailedPrecondition(
                    f"run {short(run_id)} step {step} is older than what pool {short(self.name)} "
                    f"remembers ({self._retention_text()}): it cannot be replayed; "
                    "select with a new step number"
                )
        n = self._state.task_count
        if not 1 <= batch_size <= n:
            raise InvalidArgument(
                f"batch_size must be in [1, {n}] for pool {short(self.name)}, got {batch_size}"
            )
        if len(self.open) >= self.retention.max_open_selections:
            raise ResourceExhausted(
                f"pool {short(self.name)} has {len(self.open)} open selections, the limit: report "
                "(or final=true) the ones you have before drawing more"
            )
        number = self._state.selections_opened
        drawn = select_batch(self.engine(), batch_size, number, run_id)
        return OpenSelection(
            now, number, run_id, step, drawn.indices, drawn.sampled, drawn.means,
            float(expected), self.steps_applied,
            now + (wait_seconds or self._state.config.selection_wait_seconds),
        )  # fmt: skip

    def plan_report(
        self,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
        now: float,
        run_id: str = "",
        memo: dict[str, Any] | None = None,
    ) -> Report | ReportAck:
        """The record of a new report, or the answer given to an earlier use of its id.

        ``memo`` keeps what does not depend on the pool's state (the payload's
        digest, the validation, the outcomes summed per task) across the
        retries of one request, when a replica plans it again after another
        appended first.
        """
        memo = {} if memo is None else memo
        if not 1 <= len(request_id) <= MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id must be 1..{MAX_REQUEST_ID} characters")
        if len(run_id) > MAX_RUN_ID:
            raise InvalidArgument(f"run_id is longer than {MAX_RUN_ID} characters")
        digest = memo.get("digest")
        if digest is None:
            digest = memo["digest"] = payload_digest(selection_id, outcomes, final, run_id)
        seen = self.standalone.get(request_id) or self.bound.get(request_id)
        if seen is not None:
            if seen.digest != digest:
                raise AlreadyExists(
                    f"request_id {short(request_id)} was already used with a different payload"
                )
            return dataclasses.replace(seen.ack, duplicate=True)
        if "checked" not in memo:
            check_report_args(request_id, selection_id, outcomes, final)
            memo["checked"] = True
        number = -1
        if selection_id:
            number = self._open_number(selection_id)
        summed = memo.get("evidence")
        if summed is None or summed[0] != self._state.task_count:
            outs = ((o.task_key, o.successes, o.trials) for o in outcomes)
            summed = memo["evidence"] = (self._state.task_count, aggregate(self._state, outs))
        ev = summed[1]
        if number < 0:
            made = request_time(request_id)
            if made is not None and made <= self.dedup_floor:
                raise FailedPrecondition(
                    f"request_id {short(request_id)} was made before the oldest standalone "
                    f"report pool {short(self.name)} still remembers ({self.retention.request_ids} "
                    f"request ids, up to {self.retention.request_seconds:g} s): it may have been "
                    "applied already, so it is refused. If you know it was not, send the "
                    "evidence again with a new request id"
                )
            _check_total(self._state, ev.indices, ev.trials)
            return Report(
                now, request_id, digest, run_id, -1, ev.indices, ev.successes, ev.trials, final
            )
        sel = self.open[number]
        pos = self._positions(sel, ev.indices, selection_id)
        assert sel.trials is not None
        _check_total(self._state, ev.indices, sel.trials[pos] + ev.trials)
        return Report(
            now, request_id, digest, "", number, ev.indices, ev.successes, ev.trials, final
        )

    def plan_expire(self, now: float) -> list[Expire]:
        return [
            Expire(now, n) for n, sel in sorted(self.open.items()) if sel.opened.deadline <= now
        ]

    def _open_number(self, selection_id: str) -> int:
        prefix, _, num = selection_id.rpartition("-")
        if prefix != self.incarnation or not num.isdigit():
            raise NotFound(f"selection {short(selection_id)} not found in pool {short(self.name)}")
        number = int(num)
        if number in self.open:
            return number
        if number in self.closed:
            raise FailedPrecondition(
                f"selection {short(selection_id)} is already closed (its step was applied, "
                "or its wait window expired). SelectBatch with the same run_id and step "
                "replays it: use the next step (or a new run_id) for new rollouts, and report "
                "late evidence without a selection_id, as a step of its own"
            )
        if number < self._state.selections_opened:
            raise FailedPrecondition(
                f"selection {short(selection_id)} is older than what pool {short(self.name)} "
                f"remembers ({self._retention_text()}); its evidence cannot be matched. "
                "A report without a selection_id applies it as a step of its own"
            )
        raise NotFound(f"selection {short(selection_id)} not found in pool {short(self.name)}")

    def _positions(self, sel: Selection, indices: IntArray, selection_id: str) -> IntArray:
        """Batch positions of ``indices`` (sorted) in ``sel``; FailedPrecondition if absent."""
        members = self._members.get(sel.number)
        if members is None:
            order = np.argsort(sel.opened.indices, kind="stable")
            members = (sel.opened.indices[order], order.astype(np.int64))
            self._members[sel.number] = members
        sorted_idx, order = members
        at = np.searchsorted(sorted_idx, indices)
        at_c = np.minimum(at, len(sorted_idx) - 1)
        missing = sorted_idx[at_c] != indices
        if missing.any():
            key = self._state.keys[int(indices[np.argmax(missing)])]
            raise FailedPrecondition(
                f"task {short(key)} is not part of selection {short(selection_id)}"
            )
        pos: IntArray = order[at_c]
        return pos

    def _retention_text(self) -> str:
        r = self.retention
        return (
            f"the last {r.closed_selections} closed selections, for up to {r.selection_seconds:g} s"
        )

    # ------------------------------------------------------------- applying
    def apply(self, seq: int, record: Record) -> SelectionView | ReportAck | None:
        """Applies the record logged at ``seq``; returns the view or ack it produces."""
        if seq != self.seq + 1:
            raise RuntimeError(f"pool {short(self.name)}: record {seq} applied after {self.seq}")
        self.seq = seq
        self.now = max(self.now, record.time)
        result: SelectionView | ReportAck | None = None
        if isinstance(record, AddTasks):
            self.add_columns(record)
        elif isinstance(record, OpenSelection):
            n = len(record.indices)
            sel = Selection(record, np.zeros(n), np.zeros(n))
            self._state.selections_opened = record.number + 1
            self.open[record.number] = sel
            self._seen(record.run_id, record.time)
            if record.run_id:
                self.by_run[(record.run_id, record.step)] = record.number
            result = self.view(sel, replayed=False)
        elif isinstance(record, Report):
            result = self._apply_report(record)
        else:
            sel_or_none = self.open.get(record.selection)
            if sel_or_none is not None:
                self.selections_expired += 1
                self._close(sel_or_none)
        self._forget_old()
        if len(self.pending) >= MAX_PENDING_STEPS:
            self.engine()
        return result

    def _apply_report(self, r: Report) -> ReportAck:
        ev = Evidence(r.indices, r.successes, r.trials)
        if r.selection < 0:
            self.pending.append((ev, r.run_id))
            self._seen(r.run_id, r.time)
            ack = ReportAck(False, SelectionState.NONE, 1, self.steps_applied)
            self.standalone[r.request_id] = RequestMemo(r.digest, ack, -1, r.time)
            return ack
        sel = self.open[r.selection]
        closes = self._closes(sel, r)
        s, t = self._accumulated(sel, r)
        sel = dataclasses.replace(
            sel, successes=s, trials=t, requests=(*sel.requests, r.request_id)
        )
        self.open[r.selection] = sel
        if closes:
            state = self._close(sel)
            applied = 1 if state is SelectionState.APPLIED else 0
        else:
            state, applied = SelectionState.OPEN, 0
        ack = ReportAck(False, state, applied, self.steps_applied)
        self.bound[r.request_id] = RequestMemo(r.digest, ack, r.selection, r.time)
        return ack

    def _accumulated(self, sel: Selection, r: Report) -> tuple[FloatArray, FloatArray]:
        """The selection's evidence with ``r`` added (new arrays)."""
        pos = self._positions(sel, r.indices, self.selection_id(r.selection))
        assert sel.successes is not None and sel.trials is not None
        s, t = sel.successes.copy(), sel.trials.copy()
        s[pos] += r.successes
        t[pos] += r.trials
        return s, t

    def _closes(self, sel: Selection, r: Report) -> bool:
        """Whether ``r`` closes ``sel``: final, or every task then has its expected trials."""
        return r.final or bool(np.all(self._accumulated(sel, r)[1] >= sel.opened.expected_trials))

    def _close(self, sel: Selection) -> SelectionState:
        del self.open[sel.number]
        self._members.pop(sel.number, None)
        assert sel.successes is not None and sel.trials is not None
        seen = sel.trials > 0
        state = SelectionState.DISCARDED
        if seen.any():
            idx = sel.opened.indices[seen]
            order = np.argsort(idx, kind="stable")
            ev = Evidence(idx[order], sel.successes[seen][order], sel.trials[seen][order])
            self.pending.append((ev, sel.opened.run_id))
            state = SelectionState.APPLIED
        self.closed[sel.number] = dataclasses.replace(
            sel, successes=None, trials=None, closed_at=self.now
        )
        return state

    def _seen(self, run: str, when: float) -> None:
        first, _ = self.run_seen.get(run, (when, when))
        self.run_seen[run] = (first, when)

    def _forget_old(self) -> None:
        r = self.retention
        stale = [
            run
            for run, (_, last) in self.run_seen.items()
            if last < self.now - r.selection_seconds and not self._has_open(run)
        ]
        if stale:
            engine = self.engine()  # their pending steps first
            for run in stale:
                del self.run_seen[run]
                engine.runs.pop(run, None)
        sel_cut = self.now - r.selection_seconds
        while self.closed:
            first = next(iter(self.closed.values()))
            if len(self.closed) <= r.closed_selections and first.closed_at >= sel_cut:
                break
            self.closed.popitem(last=False)
            o = first.opened
            if o.run_id:
                self.by_run.pop((o.run_id, o.step), None)
                lo, hi = self.forgotten_runs.get(o.run_id, (o.step, o.step))
                self.forgotten_runs[o.run_id] = (min(lo, o.step), max(hi, o.step))
            for rid in first.requests:
                self.bound.pop(rid, None)
        req_cut = self.now - r.request_seconds
        while self.standalone:
            memo = next(iter(self.standalone.values()))
            if len(self.standalone) <= r.request_ids and memo.time >= req_cut:
                break
            self.standalone.popitem(last=False)
            self.dedup_floor = max(self.dedup_floor, memo.time)

    def _has_open(self, run: str) -> bool:
        return any(s.opened.run_id == run for s in self.open.values())

    def run_stats(self) -> tuple[RunStats, ...]:
        """The pool's runs, busiest first (call after :meth:`engine`)."""
        st = self._state
        out = []
        for run, (first, last) in self.run_seen.items():
            rs = st.runs.get(run) or RunState()
            active = rs.steps > 0 and rs.last_step > st.steps_applied - ACTIVE_STEPS
            delta = run_offset(st.runs, run, st.steps_applied) or 0.0
            out.append(
                RunStats(
                    run,
                    first,
                    last,
                    rs.steps,
                    rs.capability,
                    rs.last_etr,
                    rs.rolling_etr,
                    active,
                    delta,
                )
            )
        return tuple(sorted(out, key=lambda x: (-x.steps, x.run_id)))

    # ---------------------------------------------------------------- views
    def view(self, sel: Selection, *, replayed: bool) -> SelectionView:
        o = sel.opened
        return SelectionView.of(
            self.selection_id(o.number), self._state.keys, o.indices, o.sampled, o.means,
            replayed=replayed, version=o.version, expected_trials=o.expected_trials,
        )  # fmt: skip

    def stats(self) -> PoolStats:
        st = self.engine()
        return PoolStats(
            name=st.name,
            config=st.config,
            task_count=st.task_count,
            steps_applied=st.steps_applied,
            open_selections=len(self.open),
            last_effective_task_ratio=st.last_etr,
            rolling_effective_task_ratio=st.rolling_etr,
            capability=st.capability,
            tasks_with_references=st.derived.ref_count,
            selections_opened=st.selections_opened,
            selections_expired=self.selections_expired,
            **engine_stats(st),
            runs=self.run_stats(),
        )


def _check_total(state: PoolState, indices: IntArray, trials: FloatArray) -> None:
    """InvalidArgument when a task's evidence in one step would exceed MAX_TRIALS."""
    over = ~(trials <= MAX_TRIALS)
    if over.any():
        key = state.keys[int(indices[np.argmax(over)])]
        raise InvalidArgument(
            f"task {short(key)}: the trials of one step would add up to more than "
            f"{MAX_TRIALS:g}; report counts of real rollouts"
        )

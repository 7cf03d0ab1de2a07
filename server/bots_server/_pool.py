"""One pool's service-level state: selections, report dedup, and the records that change it.

Every change is a *record* (a JSON-ready dict). A request is first *planned*
(validated against the current state, which is not touched) into a record;
the store makes the record durable and then *applies* it. Replaying the same
records in the same order rebuilds the same state, which is how the embedded
store recovers and how the total order of steps (spec §5) is defined.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from bots_core import (
    Evidence,
    InvalidInputError,
    PoolState,
    TaskSpec,
    aggregate,
    apply_step,
    check_counts,
    select_batch,
)

from bots_server._errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from bots_server._model import (
    OutcomeIn,
    PoolStats,
    ReportAck,
    SelectionState,
    SelectionView,
    engine_stats,
)

Record = dict[str, Any]

POOL_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
MAX_RUN_ID = 256
MAX_REQUEST_ID = 128


def check_pool_name(name: str) -> None:
    """Raises InvalidArgument for a name that is not 1..128 of [A-Za-z0-9._-]."""
    if not POOL_NAME.match(name):
        raise InvalidArgument(
            f"pool name {name!r} is invalid: use 1..128 characters from "
            "[A-Za-z0-9._-], not starting with '.'"
        )


def check_select_args(run_id: str, expected_trials: float) -> None:
    """Validates the state-free arguments of SelectBatch."""
    if len(run_id) > MAX_RUN_ID:
        raise InvalidArgument(f"run_id is longer than {MAX_RUN_ID} characters")
    if not (math.isfinite(expected_trials) and expected_trials >= 0):
        raise InvalidArgument(f"expected_trials must be finite and >= 0, got {expected_trials}")


def check_report_args(
    request_id: str, selection_id: str, outcomes: Sequence[OutcomeIn], final: bool
) -> None:
    """Validates the state-free arguments of ReportOutcomes."""
    if not 1 <= len(request_id) <= MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id must be 1..{MAX_REQUEST_ID} characters")
    for o in outcomes:
        check_counts(o.task_key, o.successes, o.trials)
    if not selection_id and not outcomes:
        raise InvalidArgument("a report without a selection_id needs at least one outcome")
    if not outcomes and not final:
        raise InvalidArgument("empty report: give outcomes, or final=true to close the selection")


def parse_selection_id(selection_id: str, incarnation: str, pool: str) -> int:
    """The selection number inside an id of this pool incarnation (NotFound otherwise)."""
    prefix, _, num = selection_id.rpartition("-")
    if prefix != incarnation or not num.isdigit():
        raise NotFound(f"selection {selection_id!r} not found in pool {pool!r}")
    return int(num)


def payload_digest(selection_id: str, outcomes: Sequence[OutcomeIn], final: bool) -> str:
    """Digest of a report's payload, to tell a retry from a reused request id."""
    payload = json.dumps(
        [selection_id, [[o.task_key, o.successes, o.trials] for o in outcomes], final],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class SelectionData:
    """A selection: the drawn tasks and, while open, the evidence gathered."""

    number: int
    run_id: str
    step: int
    indices: npt.NDArray[np.int64]
    sampled: npt.NDArray[np.float64]
    means: npt.NDArray[np.float64]
    expected_trials: float
    version: int
    deadline: float
    successes: npt.NDArray[np.float64] = field(init=False)
    trials: npt.NDArray[np.float64] = field(init=False)
    _position: dict[int, int] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.successes = np.zeros(len(self.indices))
        self.trials = np.zeros(len(self.indices))

    @property
    def position(self) -> dict[int, int]:
        """Task index -> position in the selection (built on the first report)."""
        if self._position is None:
            self._position = {i: p for p, i in enumerate(self.indices.tolist())}
        return self._position

    def complete(self) -> bool:
        return bool(np.all(self.trials >= self.expected_trials))

    def evidence(self) -> Evidence:
        seen = self.trials > 0
        order = np.argsort(self.indices[seen], kind="stable")
        return Evidence(
            self.indices[seen][order], self.successes[seen][order], self.trials[seen][order]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "run_id": self.run_id,
            "step": self.step,
            "indices": _b64(self.indices),
            "sampled": _b64(self.sampled),
            "means": _b64(self.means),
            "expected_trials": self.expected_trials,
            "version": self.version,
            "deadline": self.deadline,
            "successes": _b64(self.successes),
            "trials": _b64(self.trials),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SelectionData:
        sel = cls(
            d["number"],
            d["run_id"],
            d["step"],
            _unb64(d["indices"], np.int64),
            _unb64(d["sampled"], np.float64),
            _unb64(d["means"], np.float64),
            d["expected_trials"],
            d["version"],
            d["deadline"],
        )
        sel.successes = _unb64(d["successes"], np.float64)
        sel.trials = _unb64(d["trials"], np.float64)
        return sel


class PoolRuntime:
    """A pool's engine state plus selections and dedup memory (not thread-safe)."""

    def __init__(
        self,
        state: PoolState,
        incarnation: str,
        *,
        selection_history: int = 1024,
        dedup_history: int = 100_000,
    ) -> None:
        self.state = state
        self.incarnation = incarnation
        self.open: dict[int, SelectionData] = {}
        self.closed: collections.OrderedDict[int, SelectionData] = collections.OrderedDict()
        self.by_run: dict[tuple[str, int], int] = {}
        self.dedup: collections.OrderedDict[str, tuple[str, dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self.selections_expired = 0
        self.seq = 0
        self.selection_history = selection_history
        self.dedup_history = dedup_history

    # ------------------------------------------------------------------ ids
    def selection_id(self, number: int) -> str:
        return f"{self.incarnation}-{number}"

    def _parse_selection(self, selection_id: str) -> int:
        return parse_selection_id(selection_id, self.incarnation, self.state.name)

    # ------------------------------------------------------------ planning
    def plan_add(self, specs: Sequence[TaskSpec], max_tasks: int) -> Record | None:
        fresh = self.state.plan_add(specs)
        if not fresh:
            return None
        if self.state.task_count + len(fresh) > max_tasks:
            raise ResourceExhausted(
                f"pool {self.state.name!r} would hold {self.state.task_count + len(fresh)} "
                f"tasks; the limit is {max_tasks}"
            )
        return {"op": "add", "tasks": [_spec_to_list(s) for s in fresh]}

    def plan_select(
        self, batch_size: int, run_id: str, step: int, expected_trials: float, now: float
    ) -> tuple[Record | None, SelectionView | None]:
        """Returns (record to apply, None) or (None, replayed view)."""
        check_select_args(run_id, expected_trials)
        expected = expected_trials or self.state.config.pseudo_rollouts
        if run_id:
            number = self.by_run.get((run_id, step))
            if number is not None:
                sel = self.open.get(number) or self.closed[number]
                if len(sel.indices) != batch_size or sel.expected_trials != expected:
                    raise AlreadyExists(
                        f"run {run_id!r} step {step} was already selected with batch_size "
                        f"{len(sel.indices)} and expected_trials {sel.expected_trials}"
                    )
                return None, self.view(sel, replayed=True)
        n = self.state.task_count
        if not 1 <= batch_size <= n:
            raise InvalidArgument(
                f"batch_size must be in [1, {n}] for pool {self.state.name!r}, got {batch_size}"
            )
        number = self.state.selections_opened
        drawn = select_batch(self.state, batch_size, number)
        return {
            "_drawn": drawn,  # in-memory only (keys starting with "_" are not journaled)
            "op": "select",
            "number": number,
            "run_id": run_id,
            "step": step,
            "indices": _b64(drawn.indices),
            "sampled": _b64(drawn.sampled),
            "means": _b64(drawn.means),
            "expected_trials": expected,
            "version": self.state.steps_applied,
            "deadline": now + self.state.config.selection_wait_seconds,
        }, None

    def plan_report(
        self, request_id: str, selection_id: str, outcomes: Sequence[OutcomeIn], final: bool
    ) -> tuple[Record | None, ReportAck | None]:
        """Returns (record to apply, None) or (None, answer of the original request)."""
        if not 1 <= len(request_id) <= MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id must be 1..{MAX_REQUEST_ID} characters")
        digest = payload_digest(selection_id, outcomes, final)
        seen = self.dedup.get(request_id)
        if seen is not None:
            if seen[0] != digest:
                raise AlreadyExists(
                    f"request_id {request_id!r} was already used with a different payload"
                )
            return None, _ack_from_json(seen[1], duplicate=True)
        check_report_args(request_id, selection_id, outcomes, final)
        number = -1
        if selection_id:
            number = self._parse_selection(selection_id)
            if number in self.closed:
                raise FailedPrecondition(
                    f"selection {selection_id!r} is already closed; report late evidence "
                    "without a selection_id"
                )
            if number not in self.open:
                raise NotFound(f"selection {selection_id!r} not found in pool {self.state.name!r}")
        ev = aggregate(self.state, ((o.task_key, o.successes, o.trials) for o in outcomes))
        if number >= 0:
            sel = self.open[number]
            for i in ev.indices:
                if int(i) not in sel.position:
                    raise FailedPrecondition(
                        f"task {self.state.keys[int(i)]!r} is not part of selection {selection_id!r}"
                    )
        return {
            "op": "report",
            "request_id": request_id,
            "digest": digest,
            "selection": number,
            "indices": ev.indices.tolist(),
            "successes": ev.successes.tolist(),
            "trials": ev.trials.tolist(),
            "final": final,
        }, None

    def plan_expire(self, now: float) -> list[Record]:
        return [
            {"op": "expire", "selection": n}
            for n, sel in sorted(self.open.items())
            if sel.deadline <= now
        ]

    # ------------------------------------------------------------- applying
    def apply(self, record: Record) -> Any:
        """Applies a planned record; returns the view or ack it produces."""
        op = record["op"]
        self.seq += 1
        if op == "add":
            self.state.add_tasks([_spec_from_list(t) for t in record["tasks"]])
            return None
        if op == "select":
            drawn = record.get("_drawn")
            sel = SelectionData(
                record["number"],
                record["run_id"],
                record["step"],
                drawn.indices if drawn is not None else _unb64(record["indices"], np.int64),
                drawn.sampled if drawn is not None else _unb64(record["sampled"], np.float64),
                drawn.means if drawn is not None else _unb64(record["means"], np.float64),
                record["expected_trials"],
                record["version"],
                record["deadline"],
            )
            self.state.selections_opened = sel.number + 1
            self.open[sel.number] = sel
            if sel.run_id:
                self.by_run[(sel.run_id, sel.step)] = sel.number
            return self.view(sel, replayed=False)
        if op == "report":
            return self._apply_report(record)
        if op == "expire":
            due = self.open.get(record["selection"])
            if due is not None:
                self.selections_expired += 1
                self._close(due)
            return None
        raise InvalidInputError(f"unknown record op {op!r}")

    def _apply_report(self, record: Record) -> ReportAck:
        idx = np.asarray(record["indices"], dtype=np.int64)
        s = np.asarray(record["successes"], dtype=np.float64)
        t = np.asarray(record["trials"], dtype=np.float64)
        number = record["selection"]
        if number < 0:
            apply_step(self.state, Evidence(idx, s, t))
            ack = ReportAck(False, SelectionState.NONE, 1, self.state.steps_applied)
        else:
            sel = self.open[number]
            pos = np.array([sel.position[int(i)] for i in idx], dtype=np.int64)
            sel.successes[pos] += s
            sel.trials[pos] += t
            if record["final"] or sel.complete():
                state = self._close(sel)
                applied = 1 if state is SelectionState.APPLIED else 0
            else:
                state, applied = SelectionState.OPEN, 0
            ack = ReportAck(False, state, applied, self.state.steps_applied)
        self.dedup[record["request_id"]] = (record["digest"], _ack_to_json(ack))
        while len(self.dedup) > self.dedup_history:
            self.dedup.popitem(last=False)
        return ack

    def _close(self, sel: SelectionData) -> SelectionState:
        del self.open[sel.number]
        ev = sel.evidence()
        state = SelectionState.DISCARDED
        if len(ev.indices):
            apply_step(self.state, ev)
            state = SelectionState.APPLIED
        self.closed[sel.number] = sel
        while len(self.closed) > self.selection_history:
            old_n, old = self.closed.popitem(last=False)
            if old.run_id and self.by_run.get((old.run_id, old.step)) == old_n:
                del self.by_run[(old.run_id, old.step)]
        return state

    # ---------------------------------------------------------------- views
    def view(self, sel: SelectionData, *, replayed: bool) -> SelectionView:
        return SelectionView.of(
            self.selection_id(sel.number), self.state.keys, sel.indices, sel.sampled, sel.means,
            replayed=replayed, version=sel.version, expected_trials=sel.expected_trials,
        )  # fmt: skip

    def stats(self) -> PoolStats:
        st = self.state
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
        )

    # -------------------------------------------------------- serialisation
    def meta_to_json(self) -> dict[str, Any]:
        """Everything but the engine state, for snapshots."""
        return {
            "incarnation": self.incarnation,
            "seq": self.seq,
            "selections_expired": self.selections_expired,
            "open": [s.to_json() for s in self.open.values()],
            "closed": [s.to_json() for s in self.closed.values()],
            "dedup": [[k, d, a] for k, (d, a) in self.dedup.items()],
        }

    def load_meta(self, meta: dict[str, Any]) -> None:
        self.seq = meta["seq"]
        self.selections_expired = meta["selections_expired"]
        for d in meta["open"]:
            sel = SelectionData.from_json(d)
            self.open[sel.number] = sel
        for d in meta["closed"]:
            sel = SelectionData.from_json(d)
            self.closed[sel.number] = sel
        for sel in [*self.closed.values(), *self.open.values()]:
            if sel.run_id:
                self.by_run[(sel.run_id, sel.step)] = sel.number
        for k, d, a in meta["dedup"]:
            self.dedup[k] = (d, a)


def _b64(a: npt.NDArray[Any]) -> str:
    return base64.b64encode(
        np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
    ).decode()


def _unb64(s: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
    return np.frombuffer(base64.b64decode(s), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _spec_to_list(s: TaskSpec) -> list[Any]:
    w = None if math.isnan(s.weak) else s.weak
    g = None if math.isnan(s.strong) else s.strong
    return [s.key, w, g, s.prior_alpha, s.prior_beta]


def _spec_from_list(v: list[Any]) -> TaskSpec:
    key, w, g, a0, b0 = v
    return TaskSpec(key, math.nan if w is None else w, math.nan if g is None else g, a0, b0)


def _ack_to_json(ack: ReportAck) -> dict[str, Any]:
    return {
        "state": ack.selection_state.value,
        "steps_applied": ack.steps_applied,
        "version": ack.posterior_version,
    }


def _ack_from_json(d: dict[str, Any], *, duplicate: bool) -> ReportAck:
    return ReportAck(duplicate, SelectionState(d["state"]), d["steps_applied"], d["version"])

"""Conversions between the client's dataclasses and the bots.v1 protobuf messages.

Shared by the sync and asyncio clients so that neither holds wire details.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from bots_api.v1 import selector_pb2 as pb

from bots_client._errors import BotsError, InvalidRequestError
from bots_client._types import (
    EstimatorKind,
    Outcome,
    PoolConfig,
    PoolHeader,
    PoolInfo,
    ReportResult,
    RunInfo,
    SelectedTask,
    Selection,
    SelectionMode,
    SelectionState,
    Task,
    TaskPosterior,
)

TaskLike: TypeAlias = "Task | str | Mapping[str, Any]"
"""A task given as a `Task`, a bare key, or a mapping with Task's field names."""

OutcomesLike: TypeAlias = (
    "Mapping[str, tuple[float, float]] | Iterable[Outcome | tuple[str, float, float]]"
)
"""Outcomes as `Outcome` objects, (key, successes, trials) tuples, or key -> (s, t)."""

ExportChunk: TypeAlias = "tuple[PoolHeader, list[TaskPosterior]]"
"""One chunk of an export: the pool header (same object on every chunk) and its tasks."""

DEFAULT_CHUNK_SIZE = 10_000

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


def request_builder(fn: F) -> F:
    """Turns a value protobuf refuses while building a request into `InvalidRequestError`.

    A safety net behind the explicit checks: protobuf raises a bare
    ``ValueError`` (e.g. "Value out of range") for values its fields cannot
    hold. Wrong Python types keep raising ``TypeError``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InvalidRequestError:
            raise
        except ValueError as exc:
            raise InvalidRequestError(f"invalid request: {exc}") from None

    return wrapper  # type: ignore[return-value]


def int_arg(name: str, value: int, low: int, high: int) -> int:
    """``value`` as an int, checked to lie in [low, high].

    Raises:
        TypeError: If ``value`` is not an integer (numpy integers are fine).
        InvalidRequestError: If it is out of range.
    """
    number = operator.index(value)
    if not low <= number <= high:
        raise InvalidRequestError(f"{name} must be in [{low}, {high}], got {number}")
    return number


_MODE_TO_PB = {
    SelectionMode.THOMPSON: pb.SELECTION_MODE_THOMPSON,
    SelectionMode.GREEDY: pb.SELECTION_MODE_GREEDY,
    SelectionMode.SOFTMAX: pb.SELECTION_MODE_SOFTMAX,
    SelectionMode.UNIFORM: pb.SELECTION_MODE_UNIFORM,
}
_MODE_FROM_PB = {int(v): k for k, v in _MODE_TO_PB.items()}
_ESTIMATOR_TO_PB = {
    EstimatorKind.INTERPOLATION: pb.ESTIMATOR_KIND_INTERPOLATION,
    EstimatorKind.SIMILARITY: pb.ESTIMATOR_KIND_SIMILARITY,
    EstimatorKind.BOTH: pb.ESTIMATOR_KIND_BOTH,
}
_ESTIMATOR_FROM_PB = {int(v): k for k, v in _ESTIMATOR_TO_PB.items()}

_STATE_FROM_PB = {
    int(pb.SELECTION_STATE_UNSPECIFIED): SelectionState.UNSPECIFIED,
    int(pb.SELECTION_STATE_OPEN): SelectionState.OPEN,
    int(pb.SELECTION_STATE_APPLIED): SelectionState.APPLIED,
    int(pb.SELECTION_STATE_DISCARDED): SelectionState.DISCARDED,
}

# Numeric config fields, from the contract (the dataclass mirrors it; a test checks).
_CONFIG_FLOATS = tuple(f.name for f in pb.PoolConfig.DESCRIPTOR.fields if f.type == f.TYPE_DOUBLE)
_TASK_FLOATS = ("weak", "strong", "prior_alpha", "prior_beta")


# --- config ------------------------------------------------------------------


@request_builder
def config_to_pb(config: PoolConfig | None) -> pb.PoolConfig:
    """The protobuf form of a config; None fields stay unset."""
    msg = pb.PoolConfig()
    if config is None:
        return msg
    for name in _CONFIG_FLOATS:
        value = getattr(config, name)
        if value is not None:
            setattr(msg, name, float(value))
    if config.seed is not None:
        msg.seed = int(config.seed)
    if config.mode is not None:
        msg.mode = _MODE_TO_PB[SelectionMode(config.mode)]
    if config.estimator is not None:
        msg.estimator = _ESTIMATOR_TO_PB[EstimatorKind(config.estimator)]
    return msg


def config_from_pb(msg: pb.PoolConfig) -> PoolConfig:
    """The dataclass form of a config; unset fields (and an unknown mode) become None."""
    values: dict[str, Any] = {
        name: getattr(msg, name) for name in _CONFIG_FLOATS if msg.HasField(name)
    }
    if msg.HasField("seed"):
        values["seed"] = msg.seed
    mode = _MODE_FROM_PB.get(int(msg.mode))
    if mode is not None:
        values["mode"] = mode
    estimator = _ESTIMATOR_FROM_PB.get(int(msg.estimator))
    if estimator is not None:
        values["estimator"] = estimator
    return PoolConfig(**values)


# --- tasks -------------------------------------------------------------------


def task_fields(task: TaskLike) -> dict[str, Any]:
    """The set fields of a task given as a `Task`, a bare key or a mapping.

    Returns:
        Keyword arguments for ``pb.Task`` (None fields left out).

    Raises:
        TypeError: For anything that is not a Task, str or mapping.
        InvalidRequestError: For a mapping without a key or with unknown fields.
    """
    if isinstance(task, str):
        return {"key": task}
    if isinstance(task, Task):
        fields: dict[str, Any] = {"key": task.key}
        # Spelled out: this runs once per task of million-task pools.
        if task.weak is not None:
            fields["weak"] = float(task.weak)
        if task.strong is not None:
            fields["strong"] = float(task.strong)
        if task.prior_alpha is not None:
            fields["prior_alpha"] = float(task.prior_alpha)
        if task.prior_beta is not None:
            fields["prior_beta"] = float(task.prior_beta)
        if task.embedding:
            fields["embedding"] = task.embedding
        return fields
    if isinstance(task, Mapping):
        unknown = set(task) - {"key", "embedding", *_TASK_FLOATS}
        if unknown:
            raise InvalidRequestError(
                f"unknown task field(s): {', '.join(sorted(map(str, unknown)))}"
            )
        if "key" not in task:
            raise InvalidRequestError("a task mapping needs a 'key'")
        fields = {"key": task["key"]}
        fields.update({k: float(task[k]) for k in _TASK_FLOATS if task.get(k) is not None})
        if task.get("embedding"):
            fields["embedding"] = [float(x) for x in task["embedding"]]
        return fields
    raise TypeError(f"expected a Task, str or mapping, got {type(task).__name__}")


@request_builder
def task_to_pb(task: TaskLike) -> pb.Task:
    """The protobuf form of a task; None fields stay unset."""
    return pb.Task(**task_fields(task))


def task_from_pb(msg: pb.Task) -> Task:
    """The dataclass form of a task; unset fields become None."""
    return Task(
        msg.key,
        msg.weak if msg.HasField("weak") else None,
        msg.strong if msg.HasField("strong") else None,
        msg.prior_alpha if msg.HasField("prior_alpha") else None,
        msg.prior_beta if msg.HasField("prior_beta") else None,
        tuple(msg.embedding),
    )


@request_builder
def add_tasks_request(pool: str, tasks: Iterable[TaskLike]) -> pb.AddTasksRequest:
    """An AddTasksRequest."""
    msg = pb.AddTasksRequest(pool=pool)
    _fill_tasks(msg.tasks, tasks)
    return msg


def _fill_tasks(repeated: Any, tasks: Iterable[TaskLike]) -> None:
    # add() builds each task inside the request; a list of pb.Task would be copied in.
    add = repeated.add
    for task in tasks:
        add(**task_fields(task))


def _check_chunk_size(chunk_size: int) -> None:
    int_arg("chunk_size", chunk_size, 1, UINT32_MAX)


# --- pools -------------------------------------------------------------------


def pool_info_from_pb(msg: pb.PoolInfo) -> PoolInfo:
    """The dataclass form of a PoolInfo (NaN statistics stay NaN)."""
    return PoolInfo(
        name=msg.name,
        config=config_from_pb(msg.config),
        task_count=msg.task_count,
        steps_applied=msg.steps_applied,
        open_selections=msg.open_selections,
        last_effective_task_ratio=msg.last_effective_task_ratio,
        rolling_effective_task_ratio=msg.rolling_effective_task_ratio,
        capability=msg.capability,
        tasks_with_references=msg.tasks_with_references,
        selections_opened=msg.selections_opened,
        selections_expired=msg.selections_expired,
        mean_posterior=msg.mean_posterior,
        runs=tuple(
            RunInfo(
                r.run_id,
                r.first_seen,
                r.last_seen,
                r.steps,
                r.capability,
                r.last_effective_task_ratio,
                r.rolling_effective_task_ratio,
                r.active,
                r.offset,
            )
            for r in msg.runs
        ),
    )


def pool_info_to_pb(info: PoolInfo) -> pb.PoolInfo:
    """The protobuf form of a PoolInfo (used by tests and tools)."""
    return pb.PoolInfo(
        name=info.name,
        config=config_to_pb(info.config),
        task_count=info.task_count,
        steps_applied=info.steps_applied,
        open_selections=info.open_selections,
        last_effective_task_ratio=info.last_effective_task_ratio,
        rolling_effective_task_ratio=info.rolling_effective_task_ratio,
        capability=info.capability,
        tasks_with_references=info.tasks_with_references,
        selections_opened=info.selections_opened,
        selections_expired=info.selections_expired,
        mean_posterior=info.mean_posterior,
        runs=[pb.RunInfo(**dataclasses.asdict(r)) for r in info.runs],
    )


@request_builder
def create_request(
    name: str, preset: str, config: PoolConfig | None, tasks: Iterable[TaskLike]
) -> pb.CreatePoolRequest:
    """A CreatePoolRequest."""
    msg = pb.CreatePoolRequest(name=name, preset=preset, config=config_to_pb(config))
    _fill_tasks(msg.tasks, tasks)
    return msg


# --- selections and reports ----------------------------------------------------


@request_builder
def select_request(
    pool: str,
    batch_size: int,
    run_id: str,
    step: int,
    expected_trials: float,
    wait_seconds: float = 0.0,
) -> pb.SelectBatchRequest:
    """A SelectBatchRequest.

    Raises:
        InvalidRequestError: ``batch_size`` < 1 or ``step`` < 0 (or too large
            for the wire).
    """
    return pb.SelectBatchRequest(
        pool=pool,
        batch_size=int_arg("batch_size", batch_size, 1, UINT32_MAX),
        run_id=run_id,
        step=int_arg("step", step, 0, UINT64_MAX),
        expected_trials=float(expected_trials),
        wait_seconds=float(wait_seconds),
    )


def selection_from_pb(msg: pb.SelectBatchResponse) -> Selection:
    """The dataclass form of a SelectBatchResponse."""
    return Selection(
        selection_id=msg.selection_id,
        tasks=tuple(
            SelectedTask(
                key=t.key, index=t.index, sampled_p=t.sampled_p, posterior_mean=t.posterior_mean
            )
            for t in msg.tasks
        ),
        replayed=msg.replayed,
        posterior_version=msg.posterior_version,
        expected_trials=msg.expected_trials,
    )


@request_builder
def coerce_outcomes(outcomes: OutcomesLike) -> list[Outcome]:
    """Normalises the accepted outcome forms into a list of `Outcome`.

    Raises:
        TypeError: For an item of an unsupported shape.
    """
    if isinstance(outcomes, Mapping):
        result = []
        for key, value in outcomes.items():
            successes, trials = value
            result.append(Outcome(str(key), float(successes), float(trials)))
        return result
    result = []
    for item in outcomes:
        if isinstance(item, Outcome):
            result.append(item)
        elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3:
            key, successes, trials = item
            result.append(Outcome(str(key), float(successes), float(trials)))
        else:
            raise TypeError(
                f"expected an Outcome or a (key, successes, trials) tuple, got {item!r}"
            )
    return result


@request_builder
def report_request(
    pool: str,
    request_id: str,
    selection_id: str,
    outcomes: Sequence[Outcome],
    final: bool,
    run_id: str = "",
) -> pb.ReportOutcomesRequest:
    """A ReportOutcomesRequest."""
    return pb.ReportOutcomesRequest(
        pool=pool,
        request_id=request_id,
        selection_id=selection_id,
        run_id=run_id,
        outcomes=[
            pb.Outcome(task_key=o.task_key, successes=float(o.successes), trials=float(o.trials))
            for o in outcomes
        ],
        final=final,
    )


def report_result_from_pb(msg: pb.ReportOutcomesResponse) -> ReportResult:
    """The dataclass form of a ReportOutcomesResponse."""
    return ReportResult(
        duplicate=msg.duplicate,
        selection_state=_STATE_FROM_PB.get(int(msg.selection_state), SelectionState.UNSPECIFIED),
        steps_applied=msg.steps_applied,
        posterior_version=msg.posterior_version,
    )


# --- export / import -----------------------------------------------------------


@request_builder
def export_request(pool: str, chunk_size: int) -> pb.ExportPosteriorsRequest:
    """An ExportPosteriorsRequest.

    Raises:
        InvalidRequestError: ``chunk_size`` < 1.
    """
    _check_chunk_size(chunk_size)
    return pb.ExportPosteriorsRequest(pool=pool, chunk_size=chunk_size)


@request_builder
def header_to_pb(header: PoolHeader) -> pb.PoolHeader:
    """The protobuf form of a PoolHeader."""
    return pb.PoolHeader(
        name=header.name,
        config=config_to_pb(header.config),
        task_count=header.task_count,
        steps_applied=header.steps_applied,
        capability=header.capability,
        selections_opened=header.selections_opened,
    )


def header_from_pb(msg: pb.PoolHeader) -> PoolHeader:
    """The dataclass form of a PoolHeader."""
    return PoolHeader(
        name=msg.name,
        config=config_from_pb(msg.config),
        task_count=msg.task_count,
        steps_applied=msg.steps_applied,
        capability=msg.capability,
        selections_opened=msg.selections_opened,
    )


@request_builder
def posterior_to_pb(posterior: TaskPosterior) -> pb.TaskPosterior:
    """The protobuf form of a TaskPosterior."""
    return pb.TaskPosterior(
        task=task_fields(posterior.task), alpha=float(posterior.alpha), beta=float(posterior.beta)
    )


def posterior_from_pb(msg: pb.TaskPosterior) -> TaskPosterior:
    """The dataclass form of a TaskPosterior."""
    return TaskPosterior(task_from_pb(msg.task), msg.alpha, msg.beta)


class ExportReader:
    """Turns the PosteriorChunk stream of an export into `ExportChunk` pairs.

    The header arrives on the first chunk only; it is repeated on every pair.
    """

    def __init__(self) -> None:
        self.header: PoolHeader | None = None

    def read(self, msg: pb.PosteriorChunk) -> ExportChunk:
        """Converts one chunk.

        Raises:
            BotsError: If the first chunk carries no header.
        """
        if self.header is None:
            if not msg.HasField("header"):
                raise BotsError("export stream did not start with a pool header")
            self.header = header_from_pb(msg.header)
        return self.header, [posterior_from_pb(t) for t in msg.tasks]


class ImportWriter:
    """Turns groups of posteriors into PosteriorChunk messages, the header on the first only."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.started = False

    @request_builder
    def chunk(self, header: PoolHeader, posteriors: Iterable[TaskPosterior]) -> pb.PosteriorChunk:
        """The next message: ``posteriors``, plus the (renamed) header if it is the first."""
        msg = pb.PosteriorChunk()
        add = msg.tasks.add
        for p in posteriors:
            add(task=task_fields(p.task), alpha=float(p.alpha), beta=float(p.beta))
        if not self.started:
            msg.header.CopyFrom(import_header(header, self.name))
            self.started = True
        return msg

    def closing(self, header: PoolHeader | None) -> list[pb.PosteriorChunk]:
        """What remains to send at the end: a header-only chunk for an empty pool.

        Raises:
            InvalidRequestError: If nothing was sent and there is no header to send.
        """
        if self.started:
            return []
        if header is None:
            raise InvalidRequestError(
                "nothing to import: no chunks (an export always has a header)"
            )
        return [self.chunk(header, ())]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of at most ``size`` consecutive items (lazily).

    Raises:
        InvalidRequestError: If ``size`` < 1.
    """
    _check_chunk_size(size)
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def import_requests(
    source: PoolHeader | Iterable[tuple[PoolHeader, Sequence[TaskPosterior]]],
    tasks: Iterable[TaskPosterior] | None,
    name: str | None,
    chunk_size: int,
) -> Iterator[pb.PosteriorChunk]:
    """The ImportPosteriors stream for (header, posteriors) pairs or a header + posteriors.

    Arguments are checked now; the stream is produced lazily.

    Raises:
        TypeError: If ``tasks`` is given with pairs.
        InvalidRequestError: If ``chunk_size`` < 1, or (lazily) if there is nothing to import.
    """
    check_import_args(source, tasks, chunk_size)
    return _import_stream(source, tasks, name, chunk_size)


def check_import_args(source: object, tasks: object, chunk_size: int) -> None:
    """Validates the arguments of an import.

    Raises:
        TypeError: If ``tasks`` is given with pairs.
        InvalidRequestError: If ``chunk_size`` < 1.
    """
    if tasks is not None and not isinstance(source, PoolHeader):
        raise TypeError("tasks is only allowed when source is a PoolHeader")
    _check_chunk_size(chunk_size)


def _import_stream(
    source: PoolHeader | Iterable[tuple[PoolHeader, Sequence[TaskPosterior]]],
    tasks: Iterable[TaskPosterior] | None,
    name: str | None,
    chunk_size: int,
) -> Iterator[pb.PosteriorChunk]:
    writer = ImportWriter(name)
    if isinstance(source, PoolHeader):
        for group in batched(tasks or (), chunk_size):
            yield writer.chunk(source, group)
        yield from writer.closing(source)
        return
    for header, posteriors in source:
        yield writer.chunk(header, posteriors)
    yield from writer.closing(None)


def import_header(header: PoolHeader, name: str | None) -> pb.PoolHeader:
    """The header to send, renamed when ``name`` is given."""
    msg = header_to_pb(header)
    if name is not None:
        msg.name = name
    return msg


def new_request_id() -> str:
    """A fresh request id: creation time (ms since the epoch, 12 hex digits), '-', a uuid4.

    The server can tell from the time part when a retry is older than what a
    pool still remembers, and refuses it instead of applying it twice.
    """
    return f"{int(time.time() * 1000):012x}-{uuid.uuid4().hex}"

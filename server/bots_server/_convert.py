"""Conversions between bots.v1 messages and the server's domain objects."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from bots_api.v1 import selector_pb2 as pb
from bots_core import (
    EstimatorKind,
    InvalidInputError,
    PoolConfig,
    SelectionMode,
    TaskSpec,
    check_embeddings,
    preset,
)

from bots_server._errors import InvalidArgument, ResourceExhausted, short
from bots_server._model import (
    PoolHeaderView,
    PoolStats,
    ReportAck,
    SelectionView,
)
from bots_server._pool import check_pool_name
from bots_server._store import F32Array, PoolDump

MODE_TO_PB = {
    SelectionMode.THOMPSON: pb.SELECTION_MODE_THOMPSON,
    SelectionMode.GREEDY: pb.SELECTION_MODE_GREEDY,
    SelectionMode.SOFTMAX: pb.SELECTION_MODE_SOFTMAX,
    SelectionMode.UNIFORM: pb.SELECTION_MODE_UNIFORM,
}
MODE_FROM_PB = {v: k for k, v in MODE_TO_PB.items()}
ESTIMATOR_TO_PB = {
    EstimatorKind.INTERPOLATION: pb.ESTIMATOR_KIND_INTERPOLATION,
    EstimatorKind.SIMILARITY: pb.ESTIMATOR_KIND_SIMILARITY,
    EstimatorKind.BOTH: pb.ESTIMATOR_KIND_BOTH,
}
ESTIMATOR_FROM_PB = {v: k for k, v in ESTIMATOR_TO_PB.items()}

# The config's numeric fields come from the contract itself: a new one needs the
# .proto and the engine's PoolConfig, not a list here.
_FLOAT_FIELDS = tuple(f.name for f in pb.PoolConfig.DESCRIPTOR.fields if f.type == f.TYPE_DOUBLE)


def config_from_pb(preset_name: str, msg: pb.PoolConfig) -> PoolConfig:
    """The preset with the message's set fields on top (validated)."""
    base = preset(preset_name)
    changes: dict[str, object] = {}
    for name in _FLOAT_FIELDS:
        if msg.HasField(name):
            changes[name] = float(getattr(msg, name))
    if msg.HasField("seed"):
        changes["seed"] = int(msg.seed)
    if msg.mode != pb.SELECTION_MODE_UNSPECIFIED:
        if msg.mode not in MODE_FROM_PB:
            raise InvalidInputError(f"unknown selection mode {msg.mode}")
        changes["mode"] = MODE_FROM_PB[msg.mode]
    if msg.estimator != pb.ESTIMATOR_KIND_UNSPECIFIED:
        if msg.estimator not in ESTIMATOR_FROM_PB:
            raise InvalidInputError(f"unknown estimator {msg.estimator}")
        changes["estimator"] = ESTIMATOR_FROM_PB[msg.estimator]
    return base.replace(**changes) if changes else base


def config_to_pb(cfg: PoolConfig) -> pb.PoolConfig:
    msg = pb.PoolConfig(
        mode=MODE_TO_PB[cfg.mode], seed=cfg.seed, estimator=ESTIMATOR_TO_PB[cfg.estimator]
    )
    for name in _FLOAT_FIELDS:
        setattr(msg, name, float(getattr(cfg, name)))
    return msg


def task_from_pb(t: pb.Task) -> TaskSpec:
    return TaskSpec(
        t.key,
        t.weak if t.HasField("weak") else math.nan,
        t.strong if t.HasField("strong") else math.nan,
        t.prior_alpha if t.HasField("prior_alpha") else 1.0,
        t.prior_beta if t.HasField("prior_beta") else 1.0,
    )


def embeddings_from_pb(tasks: Sequence[pb.Task]) -> F32Array | None:
    """The tasks' embeddings as one validated (N, D) array, or None when none has one."""
    return check_embeddings([t.key for t in tasks], [t.embedding for t in tasks])


def task_to_pb(
    key: str, weak: float, strong: float, a0: float, b0: float, embedding: F32Array | None = None
) -> pb.Task:
    msg = pb.Task(key=key, prior_alpha=a0, prior_beta=b0)
    if embedding is not None:
        msg.embedding.extend(embedding.tolist())
    if not math.isnan(weak):
        msg.weak = weak
        msg.strong = strong
    return msg


def stats_to_pb(s: PoolStats) -> pb.PoolInfo:
    return pb.PoolInfo(
        name=s.name,
        config=config_to_pb(s.config),
        task_count=s.task_count,
        steps_applied=s.steps_applied,
        open_selections=s.open_selections,
        last_effective_task_ratio=s.last_effective_task_ratio,
        rolling_effective_task_ratio=s.rolling_effective_task_ratio,
        capability=s.capability,
        tasks_with_references=s.tasks_with_references,
        selections_opened=s.selections_opened,
        selections_expired=s.selections_expired,
        mean_posterior=s.mean_posterior,
        runs=[
            pb.RunInfo(
                run_id=r.run_id,
                first_seen=r.first_seen,
                last_seen=r.last_seen,
                steps=r.steps,
                capability=r.capability,
                last_effective_task_ratio=r.last_effective_task_ratio,
                rolling_effective_task_ratio=r.rolling_effective_task_ratio,
                active=r.active,
                offset=r.offset,
            )
            for r in s.runs
        ],
    )


def selection_to_pb(v: SelectionView) -> pb.SelectBatchResponse:
    resp = pb.SelectBatchResponse(
        selection_id=v.selection_id,
        replayed=v.replayed,
        posterior_version=v.posterior_version,
        expected_trials=v.expected_trials,
    )
    add = resp.tasks.add  # about twice as fast as building SelectedTask objects first
    for k, i, p, m in zip(v.keys, v.indices, v.sampled, v.means):
        add(key=k, index=i, sampled_p=p, posterior_mean=m)
    return resp


def ack_to_pb(a: ReportAck) -> pb.ReportOutcomesResponse:
    return pb.ReportOutcomesResponse(
        duplicate=a.duplicate,
        selection_state=a.selection_state.value,  # type: ignore[arg-type]
        steps_applied=a.steps_applied,
        posterior_version=a.posterior_version,
    )


def header_to_pb(h: PoolHeaderView) -> pb.PoolHeader:
    return pb.PoolHeader(
        name=h.name,
        config=config_to_pb(h.config),
        task_count=h.task_count,
        steps_applied=h.steps_applied,
        capability=h.capability,
        selections_opened=h.selections_opened,
    )


def header_from_pb(h: pb.PoolHeader) -> PoolHeaderView:
    return PoolHeaderView(
        h.name,
        config_from_pb("bots", h.config),
        h.task_count,
        h.steps_applied,
        h.capability,
        h.selections_opened,
    )


class DumpBuilder:
    """Builds the `PoolDump` of an ImportPosteriors stream one chunk at a time.

    Limits are checked as early as the stream allows: the header's task count
    against ``max_tasks`` on the first chunk, and the tasks received against
    the header's count on every chunk. The arrays are allocated once, from
    the header, and filled in place, so no more than one chunk of messages is
    held at a time.

    Args:
        max_tasks: Most tasks a pool may hold.
    """

    def __init__(self, max_tasks: int) -> None:
        self.max_tasks = max_tasks
        self.header: PoolHeaderView | None = None
        self.received = 0
        self._keys: list[str] = []
        self._values = np.empty((6, 0), dtype=np.float64)
        self._embedding: F32Array | None = None  # allocated by the first chunk that has them

    def add(self, chunk: pb.PosteriorChunk) -> None:
        """Takes the next chunk of the stream.

        Raises:
            InvalidArgument: No header on the first chunk, a header on a later
                one, a malformed header, or more tasks than the header said.
            ResourceExhausted: The header announces more than ``max_tasks``
                tasks, or there is no memory for them.
        """
        if self.header is None:
            if not chunk.HasField("header"):
                raise InvalidArgument("the first chunk of an import must carry the header")
            self._start(chunk.header)
        elif chunk.HasField("header"):
            raise InvalidArgument("only the first chunk of an import may carry a header")
        tasks = chunk.tasks
        lo, hi = self.received, self.received + len(tasks)
        if hi > len(self._keys):
            raise InvalidArgument(
                f"import stream holds more tasks than the {len(self._keys)} its header announced"
            )
        specs = [t.task for t in tasks]
        self._keys[lo:hi] = [t.key for t in specs]
        weak, strong, a0, b0, alpha, beta = self._values[:, lo:hi]
        nan = math.nan
        weak[:] = [t.weak if t.HasField("weak") else nan for t in specs]
        strong[:] = [t.strong if t.HasField("strong") else nan for t in specs]
        a0[:] = [t.prior_alpha if t.HasField("prior_alpha") else 1.0 for t in specs]
        b0[:] = [t.prior_beta if t.HasField("prior_beta") else 1.0 for t in specs]
        alpha[:] = [t.alpha for t in tasks]
        beta[:] = [t.beta for t in tasks]
        self._add_embeddings(lo, hi, specs)
        self.received = hi

    def _add_embeddings(self, lo: int, hi: int, specs: Sequence[pb.Task]) -> None:
        rows = embeddings_from_pb(specs)
        if rows is not None and self._embedding is None and lo == 0:
            try:
                self._embedding = np.empty((len(self._keys), rows.shape[1]), dtype=np.float32)
            except MemoryError:
                raise ResourceExhausted("no memory for the embeddings of this import") from None
        emb = self._embedding
        if hi > lo and (rows is None) != (emb is None):
            raise InvalidArgument(
                f"import task {short(specs[0].key)}: a pool's tasks have embeddings all or none"
            )
        if rows is not None and emb is not None:
            if rows.shape[1] != emb.shape[1]:
                raise InvalidArgument(
                    f"import task {short(specs[0].key)} has an embedding of dimension "
                    f"{rows.shape[1]}, earlier tasks {emb.shape[1]}"
                )
            emb[lo:hi] = rows

    def _start(self, msg: pb.PoolHeader) -> None:
        n = msg.task_count
        if n > self.max_tasks:
            raise ResourceExhausted(
                f"import of {n} tasks exceeds the limit of {self.max_tasks} tasks per pool"
            )
        header = header_from_pb(msg)  # validates the config before any task is read
        check_pool_name(header.name)
        try:
            values = np.empty((6, n), dtype=np.float64)
        except MemoryError:
            raise ResourceExhausted(f"no memory for an import of {n} tasks") from None
        self._values = values
        self._keys = [""] * n
        self.header = header

    def finish(self) -> PoolDump:
        """The dump, once the stream has ended.

        Raises:
            InvalidArgument: The stream was empty or held fewer tasks than its
                header said.
        """
        if self.header is None:
            raise InvalidArgument("empty import stream")
        if self.received != len(self._keys):
            raise InvalidArgument(
                f"import stream holds {self.received} tasks, header says {len(self._keys)}"
            )
        weak, strong, a0, b0, alpha, beta = self._values
        return PoolDump(self.header, self._keys, weak, strong, a0, b0, alpha, beta, self._embedding)

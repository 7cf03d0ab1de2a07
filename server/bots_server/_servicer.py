"""The bots.v1.TaskSelector servicer: validation of wire input, store calls, error mapping."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc as pb_grpc

from bots_server import _convert as cv
from bots_server._errors import InvalidArgument, ServiceError, status_for
from bots_server._model import OutcomeIn
from bots_server._settings import ServerSettings
from bots_server._store import PoolDump, Store

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_EXPORT_CHUNK = 10_000
MAX_EXPORT_CHUNK = 100_000


def _rpc(fn: F) -> F:
    """Turns known errors into their status and unexpected ones into INTERNAL."""

    @functools.wraps(fn)
    def wrapper(self: TaskSelectorServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            if not context.is_active():
                # The caller cancelled (e.g. a broken import stream), so whatever
                # went wrong has no one to hear it. Aborting (rather than returning
                # None, which gRPC would try to serialize and log as an ERROR) ends
                # the call quietly.
                log.info("%s cancelled by the client", fn.__name__)
                context.abort(grpc.StatusCode.CANCELLED, "cancelled by the client")
            known = status_for(exc)
            if known is not None:
                context.abort(*known)
            rid = uuid.uuid4().hex[:12]
            log.exception("internal error in %s (error id %s)", fn.__name__, rid)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (error id {rid})")

    return wrapper  # type: ignore[return-value]


class TaskSelectorServicer(pb_grpc.TaskSelectorServicer):
    """Serves bots.v1.TaskSelector from a Store."""

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.settings = settings

    @_rpc
    def CreatePool(self, request: pb.CreatePoolRequest, context: Any) -> pb.CreatePoolResponse:
        config = cv.config_from_pb(request.preset, request.config)
        tasks = [cv.task_from_pb(t) for t in request.tasks]
        embeddings = cv.embeddings_from_pb(request.tasks)
        stats, created, added = self.store.create_pool(request.name, config, tasks, embeddings)
        return pb.CreatePoolResponse(pool=cv.stats_to_pb(stats), created=created, tasks_added=added)

    @_rpc
    def AddTasks(self, request: pb.AddTasksRequest, context: Any) -> pb.AddTasksResponse:
        tasks = [cv.task_from_pb(t) for t in request.tasks]
        embeddings = cv.embeddings_from_pb(request.tasks)
        added, count = self.store.add_tasks(request.pool, tasks, embeddings)
        return pb.AddTasksResponse(tasks_added=added, task_count=count)

    @_rpc
    def GetPool(self, request: pb.GetPoolRequest, context: Any) -> pb.GetPoolResponse:
        return pb.GetPoolResponse(pool=cv.stats_to_pb(self.store.get_pool(request.pool)))

    @_rpc
    def ListPools(self, request: pb.ListPoolsRequest, context: Any) -> pb.ListPoolsResponse:
        return pb.ListPoolsResponse(pools=[cv.stats_to_pb(s) for s in self.store.list_pools()])

    @_rpc
    def DeletePool(self, request: pb.DeletePoolRequest, context: Any) -> pb.DeletePoolResponse:
        self.store.delete_pool(request.pool)
        return pb.DeletePoolResponse()

    @_rpc
    def SelectBatch(self, request: pb.SelectBatchRequest, context: Any) -> pb.SelectBatchResponse:
        if request.batch_size < 1:
            raise InvalidArgument("batch_size must be >= 1")
        if request.batch_size > self.settings.max_batch_size:
            raise InvalidArgument(
                f"batch_size {request.batch_size} exceeds the server limit "
                f"{self.settings.max_batch_size}"
            )
        view = self.store.select(
            request.pool,
            request.batch_size,
            request.run_id,
            request.step,
            request.expected_trials,
            request.wait_seconds,
        )
        return cv.selection_to_pb(view)

    @_rpc
    def ReportOutcomes(
        self, request: pb.ReportOutcomesRequest, context: Any
    ) -> pb.ReportOutcomesResponse:
        if len(request.outcomes) > self.settings.max_outcomes_per_report:
            raise InvalidArgument(
                f"report holds {len(request.outcomes)} outcomes; the server limit is "
                f"{self.settings.max_outcomes_per_report}"
            )
        outcomes = [OutcomeIn(o.task_key, o.successes, o.trials) for o in request.outcomes]
        ack = self.store.report(
            request.pool,
            request.request_id,
            request.selection_id,
            outcomes,
            request.final,
            request.run_id,
        )
        return cv.ack_to_pb(ack)

    @_rpc
    def ExportPosteriors(
        self, request: pb.ExportPosteriorsRequest, context: Any
    ) -> Iterator[pb.PosteriorChunk]:
        size = request.chunk_size or DEFAULT_EXPORT_CHUNK
        if size > MAX_EXPORT_CHUNK:
            raise InvalidArgument(f"chunk_size must be <= {MAX_EXPORT_CHUNK}")
        # The dump is taken here, so that a missing pool fails the call before
        # the first message; the chunks are then built lazily as they are sent.
        dump = self.store.export_pool(request.pool)
        return _chunks(dump, size)

    @_rpc
    def ImportPosteriors(
        self, request_iterator: Iterable[pb.PosteriorChunk], context: Any
    ) -> pb.ImportPosteriorsResponse:
        # Chunk by chunk into preallocated arrays: limits fail the call as soon
        # as the offending chunk arrives, and no more than one chunk is held.
        builder = cv.DumpBuilder(self.settings.max_tasks_per_pool)
        for chunk in request_iterator:
            builder.add(chunk)
        dump = builder.finish()
        if not context.is_active():
            # gRPC ends the request iterator of a cancelled call like a complete
            # stream; a cancelled import must change nothing.
            raise ServiceError("import cancelled")
        return pb.ImportPosteriorsResponse(pool=cv.stats_to_pb(self.store.import_pool(dump)))


def _chunks(dump: PoolDump, size: int) -> Iterator[pb.PosteriorChunk]:
    n = len(dump.keys)
    header = cv.header_to_pb(dump.header)
    for lo in range(0, max(n, 1), size):
        hi = min(n, lo + size)
        chunk = pb.PosteriorChunk(
            tasks=[
                pb.TaskPosterior(
                    task=cv.task_to_pb(
                        dump.keys[i],
                        float(dump.weak[i]),
                        float(dump.strong[i]),
                        float(dump.prior_alpha[i]),
                        float(dump.prior_beta[i]),
                        None if dump.embedding is None else dump.embedding[i],
                    ),
                    alpha=float(dump.alpha[i]),
                    beta=float(dump.beta[i]),
                )
                for i in range(lo, hi)
            ]
        )
        if lo == 0:
            chunk.header.CopyFrom(header)
        yield chunk

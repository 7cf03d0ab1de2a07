"""The blocking client of the bots.v1 TaskSelector service."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc as pb_grpc

from bots_client import _channel
from bots_client import _convert as cv
from bots_client._errors import BotsError, error_from_rpc
from bots_client._types import (
    PoolConfig,
    PoolHeader,
    PoolInfo,
    ReportResult,
    Selection,
    TaskPosterior,
)


class SelectorClient:
    """Blocking client of a BOTS selector service.

    Every call has a deadline (``timeout`` seconds unless the call overrides
    it). UNAVAILABLE answers are retried by the channel (bounded attempts,
    exponential backoff, throttled). `report_outcomes`, and `select_batch`
    with a ``run_id``, are idempotent on the server, so after UNAVAILABLE or
    DEADLINE_EXCEEDED the client also sends them again itself, up to
    ``retries`` times with backoff; each attempt has its own deadline. Failed
    calls raise a `BotsError` subclass.

    Use it as a context manager, or call `close`.

    Example:
        >>> with SelectorClient("127.0.0.1:50051") as client:
        ...     client.create_pool("math", ["t0", "t1", "t2"])
        ...     sel = client.select_batch("math", 2, run_id="run-1", step=0)
        ...     client.report_outcomes("math", {k: (3, 4) for k in sel.keys},
        ...                            selection_id=sel.selection_id)

    Args:
        target: ``host:port`` of the service (any gRPC target string).
        timeout: Default deadline of each call, in seconds.
        retries: Retries after a failed attempt (the channel's own retries
            are capped at 4 by gRPC).
        token: Bearer token sent as ``authorization`` metadata. Without TLS
            it travels in clear text.
        root_certificates: PEM root certificates; when given (``b""`` for the
            system roots) the channel uses TLS.
        options: Extra channel arguments; they override the client's.
        channel: A ready channel to use instead of making one from
            ``target``; the client does not close it.
    """

    def __init__(
        self,
        target: str = _channel.DEFAULT_TARGET,
        *,
        timeout: float = _channel.DEFAULT_TIMEOUT,
        retries: int = _channel.DEFAULT_RETRIES,
        token: str | None = None,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        _channel.check_settings(timeout, retries)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        creds = (
            None if channel is not None else _channel.channel_credentials(root_certificates, token)
        )
        self._metadata = _channel.call_metadata(token, creds is not None)
        self._owns_channel = channel is None
        if channel is not None:
            self._channel = channel
        else:
            opts = _channel.channel_options(retries, options)
            if creds is None:
                self._channel = grpc.insecure_channel(target, options=opts)
            else:
                self._channel = grpc.secure_channel(target, creds, options=opts)
        # The generated stub is untyped; requests and replies are typed by _convert.
        self._stub: Any = pb_grpc.TaskSelectorStub(self._channel)  # type: ignore[no-untyped-call]

    # --- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel (if the client made it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> SelectorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        return _channel.check_timeout(timeout)

    def _call(
        self, rpc: Callable[..., Any], request: Any, timeout: float | None, *, retry: bool = False
    ) -> Any:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return rpc(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as err:
                if retry and attempt < self.retries and err.code() in _channel.APP_RETRY_CODES:
                    time.sleep(_channel.backoff_seconds(attempt))
                    attempt += 1
                    continue
                raise error_from_rpc(err) from err

    # --- pools -----------------------------------------------------------------

    def create_pool(
        self,
        name: str,
        tasks: Iterable[cv.TaskLike] = (),
        *,
        preset: str = "bots",
        config: PoolConfig | None = None,
        chunk_size: int = cv.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> PoolInfo:
        """Creates a pool (a no-op if it exists with the same config) and adds tasks.

        The first ``chunk_size`` tasks go with CreatePool, the rest with
        AddTasks calls of ``chunk_size`` tasks each, so pools of millions of
        tasks can be created. Tasks that already exist identically are
        skipped, so the whole call can be repeated safely.

        Args:
            name: Pool name (1..128 characters from ``[A-Za-z0-9._-]``).
            tasks: Tasks as `Task` objects, bare keys, or mappings.
            preset: Preset the config starts from: ``"bots"``,
                ``"explicit_only"``, ``"implicit_only"`` or ``"uniform"``.
            config: Overrides on top of the preset.
            chunk_size: Tasks per request.
            timeout: Deadline of each request, in seconds.

        Returns:
            The pool as it is after all tasks were added.

        Raises:
            ConflictError: The pool exists with another config, or a task
                exists with other attributes.
            InvalidRequestError: A malformed name, config or task.
        """
        groups = cv.batched(tasks, chunk_size)
        first = next(groups, [])
        resp = self._call(
            self._stub.CreatePool, cv.create_request(name, preset, config, first), timeout
        )
        info = cv.pool_info_from_pb(resp.pool)
        more = False
        for group in groups:
            self._call(self._stub.AddTasks, cv.add_tasks_request(name, group), timeout)
            more = True
        return self.get_pool(name, timeout=timeout) if more else info

    def add_tasks(
        self,
        pool: str,
        tasks: Iterable[cv.TaskLike],
        *,
        chunk_size: int = cv.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> int:
        """Adds tasks in chunks; identical existing tasks are skipped.

        Args:
            pool: Pool name.
            tasks: Tasks as `Task` objects, bare keys, or mappings.
            chunk_size: Tasks per request.
            timeout: Deadline of each request, in seconds.

        Returns:
            The number of tasks newly added.

        Raises:
            NotFoundError: The pool does not exist.
            ConflictError: A key exists with other attributes (nothing of
                that chunk is added).
        """
        added = 0
        for group in cv.batched(tasks, chunk_size):
            resp = self._call(self._stub.AddTasks, cv.add_tasks_request(pool, group), timeout)
            added += int(resp.tasks_added)
        return added

    def get_pool(self, pool: str, *, timeout: float | None = None) -> PoolInfo:
        """Returns a pool's config and statistics.

        Raises:
            NotFoundError: The pool does not exist.
        """
        resp = self._call(self._stub.GetPool, pb.GetPoolRequest(pool=pool), timeout)
        return cv.pool_info_from_pb(resp.pool)

    def list_pools(self, *, timeout: float | None = None) -> list[PoolInfo]:
        """Returns every pool of the service."""
        resp = self._call(self._stub.ListPools, pb.ListPoolsRequest(), timeout)
        return [cv.pool_info_from_pb(p) for p in resp.pools]

    def delete_pool(self, pool: str, *, timeout: float | None = None) -> None:
        """Deletes a pool and all its state.

        Raises:
            NotFoundError: The pool does not exist.
        """
        self._call(self._stub.DeletePool, pb.DeletePoolRequest(pool=pool), timeout)

    # --- selection and evidence --------------------------------------------------

    def select_batch(
        self,
        pool: str,
        batch_size: int,
        *,
        run_id: str = "",
        step: int = 0,
        expected_trials: float = 0.0,
        wait_seconds: float = 0.0,
        timeout: float | None = None,
    ) -> Selection:
        """Opens a selection of ``batch_size`` distinct tasks (one BOTS step).

        All callers passing the same (pool, ``run_id``, ``step``) get the
        same selection, so every rank of a data-parallel run can call this.
        With a ``run_id`` the call is retried by the client after timeouts.

        Args:
            pool: Pool name.
            batch_size: Number of tasks, 1..task_count.
            run_id: Training run id; empty for an anonymous selection that is
                never deduplicated (and not retried by the client).
            step: Training step within the run.
            expected_trials: Trials each task is expected to report before
                the selection closes by itself; 0 = the pool's pseudo_rollouts.
            wait_seconds: How long this selection waits for its reports before
                it closes with what it has; 0 = the pool's selection_wait_seconds.
            timeout: Deadline of each attempt, in seconds.

        Raises:
            NotFoundError: The pool does not exist.
            InvalidRequestError: A batch size out of range.
        """
        request = cv.select_request(pool, batch_size, run_id, step, expected_trials, wait_seconds)
        resp = self._call(self._stub.SelectBatch, request, timeout, retry=bool(run_id))
        return cv.selection_from_pb(resp)

    def report_outcomes(
        self,
        pool: str,
        outcomes: cv.OutcomesLike,
        *,
        selection_id: str = "",
        final: bool = False,
        request_id: str | None = None,
        run_id: str = "",
        timeout: float | None = None,
    ) -> ReportResult:
        """Adds rollout evidence, exactly once.

        The request id is made once per call and sent with every retry, so
        a report whose answer was lost is not applied twice.

        Args:
            pool: Pool name.
            outcomes: `Outcome` objects, (key, successes, trials) tuples, or
                a mapping key -> (successes, trials). Repeated keys add up.
            selection_id: The selection the evidence belongs to; empty for a
                standalone step.
            final: Close the selection after this report.
            request_id: Idempotency key (1..128 characters); a fresh one
                (creation time, then a uuid4) when None. Pass your own to
                make retries across processes safe.
            run_id: The run a standalone step belongs to, when several runs
                share the pool (a report naming a selection belongs to the
                selection's run).
            timeout: Deadline of each attempt, in seconds.

        Returns:
            The server's answer; ``duplicate`` is True when this request id
            had been applied before.

        Raises:
            NotFoundError: Unknown pool, task or selection.
            ConflictError: ``request_id`` was used with another payload.
            InvalidRequestError: Malformed outcomes (successes > trials, NaN...).
        """
        request = cv.report_request(
            pool,
            request_id if request_id is not None else cv.new_request_id(),
            selection_id,
            cv.coerce_outcomes(outcomes),
            final,
            run_id,
        )
        resp = self._call(self._stub.ReportOutcomes, request, timeout, retry=True)
        return cv.report_result_from_pb(resp)

    # --- export / import ---------------------------------------------------------

    def export_posteriors(
        self, pool: str, chunk_size: int = cv.DEFAULT_CHUNK_SIZE, *, timeout: float | None = None
    ) -> Iterator[cv.ExportChunk]:
        """Streams a pool's posteriors.

        A generator: the call starts on the first ``next()`` and errors are
        raised from the iteration. Each item is a ``(header, posteriors)``
        pair; ``header`` is the same `PoolHeader` object on every pair and
        the posteriors come in task index order. The items can be passed
        straight to `import_posteriors`.

        Args:
            pool: Pool name.
            chunk_size: Tasks per chunk.
            timeout: Deadline of the whole stream, in seconds; raise it for
                large pools.

        Yields:
            (PoolHeader, list[TaskPosterior]) pairs.

        Raises:
            NotFoundError: The pool does not exist.
        """
        request = cv.export_request(pool, chunk_size)
        call = self._stub.ExportPosteriors(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        reader = cv.ExportReader()
        try:
            for msg in call:
                yield reader.read(msg)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()

    def import_posteriors(
        self,
        source: PoolHeader | Iterable[tuple[PoolHeader, Sequence[TaskPosterior]]],
        tasks: Iterable[TaskPosterior] | None = None,
        *,
        name: str | None = None,
        chunk_size: int = cv.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> PoolInfo:
        """Creates a pool from exported posteriors, atomically.

        Either pass the pairs an export yields, or a header and a flat
        iterable of posteriors. Nothing is created unless the whole stream
        arrives; an exception raised while reading ``source`` or ``tasks``
        cancels the stream and is re-raised.

        Args:
            source: (header, posteriors) pairs, or a `PoolHeader`.
            tasks: The posteriors, when ``source`` is a header.
            name: Import under this name instead of the header's.
            chunk_size: Tasks per chunk (header + tasks form only).
            timeout: Deadline of the whole stream, in seconds.

        Returns:
            The new pool.

        Raises:
            ConflictError: A pool with that name exists.
            InvalidRequestError: A malformed header or posterior.
        """
        requests = cv.import_requests(source, tasks, name, chunk_size)

        failure: list[BaseException] = []
        started = threading.Event()
        holder: list[Any] = []

        def guarded() -> Iterator[pb.PosteriorChunk]:
            # Raising inside a request iterator makes gRPC log a traceback and
            # end the call with UNKNOWN; cancel it ourselves instead so the
            # server drops the partial import, and re-raise the cause below.
            try:
                yield from requests
            except Exception as exc:
                failure.append(exc)
                started.wait()
                holder[0].cancel()

        future = self._stub.ImportPosteriors.future(
            guarded(), timeout=self._deadline(timeout), metadata=self._metadata
        )
        holder.append(future)
        started.set()
        try:
            resp = future.result()
        except (grpc.RpcError, grpc.FutureCancelledError) as err:
            if failure:
                raise failure[0] from None
            if isinstance(err, grpc.RpcError):
                raise error_from_rpc(err) from err
            raise BotsError("import cancelled", grpc.StatusCode.CANCELLED) from err
        return cv.pool_info_from_pb(resp.pool)

"""The asyncio client of the bots.v1 TaskSelector service (same API as `SelectorClient`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc as pb_grpc

from bots_client import _channel
from bots_client import _convert as cv
from bots_client._errors import error_from_rpc
from bots_client._types import (
    PoolConfig,
    PoolHeader,
    PoolInfo,
    ReportResult,
    Selection,
    TaskPosterior,
)

_T = TypeVar("_T")


class AsyncSelectorClient:
    """Asyncio client of a BOTS selector service.

    Same methods, arguments, deadlines, retries and errors as
    `SelectorClient`, as coroutines; `export_posteriors` is an async
    generator and `import_posteriors` also accepts async iterables. Use it as
    an async context manager, or await `close`. The channel is made on the
    first call, in the running event loop, so the client may be constructed
    anywhere but must then be used from one loop.

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
        channel: A ready ``grpc.aio`` channel to use instead of making one
            from ``target``; the client does not close it.
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
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        _channel.check_settings(timeout, retries)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self._creds = (
            None if channel is not None else _channel.channel_credentials(root_certificates, token)
        )
        self._metadata = _channel.call_metadata(token, self._creds is not None)
        self._options = _channel.channel_options(retries, options)
        self._owns_channel = channel is None
        self._channel = channel
        self._stub_obj: Any = None

    def _stub(self) -> Any:
        # grpc.aio channels belong to the event loop they are made in, so the
        # client makes its channel on first use rather than in __init__.
        if self._stub_obj is None:
            if self._channel is None:
                if self._creds is None:
                    self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
                else:
                    self._channel = grpc.aio.secure_channel(
                        self.target, self._creds, options=self._options
                    )
            # The generated stub is untyped; requests and replies are typed by _convert.
            self._stub_obj = pb_grpc.TaskSelectorStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub_obj

    # --- lifecycle -------------------------------------------------------------

    async def close(self) -> None:
        """Closes the channel (if the client made it)."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_obj = None

    async def __aenter__(self) -> AsyncSelectorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- plumbing --------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        return _channel.check_timeout(timeout)

    async def _call(
        self,
        rpc: Callable[..., Awaitable[Any]],
        request: Any,
        timeout: float | None,
        *,
        retry: bool = False,
    ) -> Any:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return await rpc(request, timeout=deadline, metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                if retry and attempt < self.retries and err.code() in _channel.APP_RETRY_CODES:
                    await asyncio.sleep(_channel.backoff_seconds(attempt))
                    attempt += 1
                    continue
                raise error_from_rpc(err) from err

    # --- pools -----------------------------------------------------------------

    async def create_pool(
        self,
        name: str,
        tasks: Iterable[cv.TaskLike] = (),
        *,
        preset: str = "bots",
        config: PoolConfig | None = None,
        chunk_size: int = cv.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> PoolInfo:
        """Creates a pool and adds tasks in chunks; see `SelectorClient.create_pool`."""
        groups = cv.batched(tasks, chunk_size)
        first = next(groups, [])
        resp = await self._call(
            self._stub().CreatePool, cv.create_request(name, preset, config, first), timeout
        )
        info = cv.pool_info_from_pb(resp.pool)
        more = False
        for group in groups:
            await self._call(self._stub().AddTasks, cv.add_tasks_request(name, group), timeout)
            more = True
        return await self.get_pool(name, timeout=timeout) if more else info

    async def add_tasks(
        self,
        pool: str,
        tasks: Iterable[cv.TaskLike],
        *,
        chunk_size: int = cv.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> int:
        """Adds tasks in chunks; returns how many were new. See `SelectorClient.add_tasks`."""
        added = 0
        for group in cv.batched(tasks, chunk_size):
            resp = await self._call(
                self._stub().AddTasks, cv.add_tasks_request(pool, group), timeout
            )
            added += int(resp.tasks_added)
        return added

    async def get_pool(self, pool: str, *, timeout: float | None = None) -> PoolInfo:
        """Returns a pool's config and statistics."""
        resp = await self._call(self._stub().GetPool, pb.GetPoolRequest(pool=pool), timeout)
        return cv.pool_info_from_pb(resp.pool)

    async def list_pools(self, *, timeout: float | None = None) -> list[PoolInfo]:
        """Returns every pool of the service."""
        resp = await self._call(self._stub().ListPools, pb.ListPoolsRequest(), timeout)
        return [cv.pool_info_from_pb(p) for p in resp.pools]

    async def delete_pool(self, pool: str, *, timeout: float | None = None) -> None:
        """Deletes a pool and all its state."""
        await self._call(self._stub().DeletePool, pb.DeletePoolRequest(pool=pool), timeout)

    # --- selection and evidence --------------------------------------------------

    async def select_batch(
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
        """Opens a selection (one BOTS step); see `SelectorClient.select_batch`."""
        request = cv.select_request(pool, batch_size, run_id, step, expected_trials, wait_seconds)
        resp = await self._call(self._stub().SelectBatch, request, timeout, retry=bool(run_id))
        return cv.selection_from_pb(resp)

    async def report_outcomes(
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
        """Adds rollout evidence exactly once; see `SelectorClient.report_outcomes`."""
        request = cv.report_request(
            pool,
            request_id if request_id is not None else cv.new_request_id(),
            selection_id,
            cv.coerce_outcomes(outcomes),
            final,
            run_id,
        )
        resp = await self._call(self._stub().ReportOutcomes, request, timeout, retry=True)
        return cv.report_result_from_pb(resp)

    # --- export / import ---------------------------------------------------------

    async def export_posteriors(
        self, pool: str, chunk_size: int = cv.DEFAULT_CHUNK_SIZE, *, timeout: float | None = None
    ) -> AsyncIterator[cv.ExportChunk]:
        """Streams a pool's posteriors as (header, posteriors) pairs.

        See `SelectorClient.export_posteriors`; ``timeout`` bounds the whole
        stream.
        """
        request = cv.export_request(pool, chunk_size)
        call = self._stub().ExportPosteriors(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        reader = cv.ExportReader()
        try:
            async for msg in call:
                yield reader.read(msg)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()

    async def import_posteriors(
        self,
        source: PoolHeader
        | Iterable[tuple[PoolHeader, Sequence[TaskPosterior]]]
        | AsyncIterable[tuple[PoolHeader, Sequence[TaskPosterior]]],
        tasks: Iterable[TaskPosterior] | AsyncIterable[TaskPosterior] | None = None,
        *,
        name: str | None = None,
        chunk_size: int = cv.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
    ) -> PoolInfo:
        """Creates a pool from exported posteriors, atomically.

        See `SelectorClient.import_posteriors`; ``source`` and ``tasks`` may
        also be async iterables.
        """
        cv.check_import_args(source, tasks, chunk_size)
        requests = _import_requests(source, tasks, name, chunk_size)
        call = self._stub().ImportPosteriors(
            timeout=self._deadline(timeout), metadata=self._metadata
        )
        try:
            try:
                async for msg in requests:
                    await call.write(msg)
            except grpc.aio.AioRpcError:
                raise
            except BaseException:
                # The server applies an import only when the stream ends
                # cleanly; cancelling drops what was sent.
                call.cancel()
                raise
            await call.done_writing()
            resp = await call
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from err
        return cv.pool_info_from_pb(resp.pool)


async def _aiter(items: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _abatched(items: Iterable[_T] | AsyncIterable[_T], size: int) -> AsyncIterator[list[_T]]:
    if not isinstance(items, AsyncIterable):
        for batch in cv.batched(items, size):
            yield batch
        return
    group: list[_T] = []
    async for item in items:
        group.append(item)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


async def _import_requests(
    source: PoolHeader
    | Iterable[tuple[PoolHeader, Sequence[TaskPosterior]]]
    | AsyncIterable[tuple[PoolHeader, Sequence[TaskPosterior]]],
    tasks: Iterable[TaskPosterior] | AsyncIterable[TaskPosterior] | None,
    name: str | None,
    chunk_size: int,
) -> AsyncIterator[pb.PosteriorChunk]:
    # Same stream as cv.import_requests, reading sync or async iterables.
    writer = cv.ImportWriter(name)
    if isinstance(source, PoolHeader):
        async for group in _abatched(tasks or (), chunk_size):
            yield writer.chunk(source, group)
        for msg in writer.closing(source):
            yield msg
        return
    async for header, posteriors in _aiter(source):
        yield writer.chunk(header, posteriors)
    for msg in writer.closing(None):
        yield msg

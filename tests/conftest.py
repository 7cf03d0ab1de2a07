"""Shared fixtures: real gRPC servers on free ports (in-process or as subprocesses)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bots_api.v1 import selector_pb2_grpc
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from service_procs import RedisProcess, ServerProcess, free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A started redis-server (no persistence), killed at the end."""
    proc = RedisProcess(tmp_path / "redis").start()
    yield proc
    proc.stop()


@pytest.fixture(params=["embedded", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    """An in-process server, once with the embedded store and once backed by a real Redis."""
    redis_url = ""
    redis_proc = None
    if request.param == "redis":
        redis_proc = RedisProcess(tmp_path / "redis").start()
        redis_url = redis_proc.url
    running = start_server(
        ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=str(tmp_path / "data"),
            expiry_interval_seconds=0.05,
            redis_url=redis_url,
            checkpoint_every=5,
        )
    )
    yield running
    running.stop(grace=0)
    if redis_proc is not None:
        redis_proc.stop()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[selector_pb2_grpc.TaskSelectorStub]:
    """A raw generated stub connected to ``server``."""
    with grpc.insecure_channel(server.address) as channel:
        yield selector_pb2_grpc.TaskSelectorStub(channel)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server subprocess (not started: call ``.start()``), always stopped at the end."""
    proc = ServerProcess(tmp_path / "data", free_port())
    yield proc
    proc.stop()

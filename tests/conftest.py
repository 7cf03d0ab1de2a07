"""Shared fixtures: real gRPC servers on free ports (in-process or as subprocesses).

No test depends on a default port being free: a `bots serve` left running on
127.0.0.1:50051 (and its metrics on 9464) must not change any result. Servers
in tests listen on port 0 or a free port, and server subprocesses get
``BOTS_METRICS_PORT=0`` (a free metrics port) unless a test passes its own.

The terminal summary also lists test files that a conftest left out at
collection (``collect_ignore``/``collect_ignore_glob``), with the reason where
the conftest gives one, so a missing optional dependency is never silent.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bots_api.v1 import selector_pb2_grpc
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from service_procs import RedisProcess, ServerProcess, free_port

# Inherited by every `bots serve` subprocess the tests start (flags still win).
os.environ["BOTS_METRICS_PORT"] = "0"

_LEFT_OUT: list[Path] = []


@pytest.hookimpl(wrapper=True)
def pytest_ignore_collect(
    collection_path: Path, config: pytest.Config
) -> Generator[None, Any, Any]:
    """Remembers test files that a conftest's ``collect_ignore(_glob)`` left out."""
    ignored = yield
    name = collection_path.name
    if ignored and name.startswith("test_") and name.endswith(".py"):
        _LEFT_OUT.append(collection_path)
    return ignored


def _reason(config: pytest.Config, path: Path) -> str:
    """Why ``path`` was left out, from the ``_LEFT_OUT`` notes of its conftest if any."""
    conftest = path.parent / "conftest.py"
    module = config.pluginmanager.get_plugin(str(conftest))
    for note in getattr(module, "_LEFT_OUT", []):
        pattern, _, why = str(note).partition(" ")
        if fnmatch.fnmatch(path.name, pattern):
            return why.strip("()") or "no reason given"
    return f"left out by {conftest.relative_to(config.rootpath)}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Lists the test files that were not collected at all, and why."""
    if not _LEFT_OUT:
        return
    terminalreporter.section("test files not run (left out at collection)", yellow=True)
    for path in sorted(set(_LEFT_OUT)):
        terminalreporter.line(f"{path.relative_to(config.rootpath)}: {_reason(config, path)}")


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
            metrics_port=0,
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

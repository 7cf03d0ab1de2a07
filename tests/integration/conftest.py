"""Fixtures for integration tests: a real gRPC server on 127.0.0.1:0."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bots_server._app import start_server
from bots_server._settings import ServerSettings


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[Any]:
    """A started server with its own embedded store in a temp dir; stopped afterwards."""
    data_dir = tmp_path / "bots-data"
    server = start_server(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=0, data_dir=str(data_dir))
    )
    try:
        yield server
    finally:
        server.stop(grace=0)


@pytest.fixture
def target(running_server: Any) -> str:
    """host:port of `running_server`."""
    return str(running_server.address)


@pytest.fixture
def refused_target() -> str:
    """host:port on which nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def silent_target() -> Iterator[str]:
    """host:port that accepts TCP connections but never speaks HTTP/2 (a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"

"""Fixtures for the trainer-adapter tests: a real in-process selector server and a client.

Most adapter tests need torch or TRL (installed by ``.ci/adapters.sh``). Where
they are missing (a plain ``make test`` in a venv without the adapter extras)
those files are left out at collection, unless ``BOTS_REQUIRE_ADAPTER_DEPS=1``
(set by ``.ci/adapters.sh``) makes a missing dependency an error instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from bots_client import SelectorClient

# Test files by the frameworks they import; the others need only the server and client.
_NEEDS = {
    "test_torch_*.py": ("torch", "torchdata"),
    "test_example_*.py": ("torch", "matplotlib"),
    "test_trl_*.py": ("torch", "trl", "transformers", "datasets"),
    "test_doc_snippets.py": ("torch", "trl", "transformers", "datasets"),
}
collect_ignore_glob: list[str] = []
_LEFT_OUT: list[str] = []
for _glob, _mods in _NEEDS.items():
    _missing = [m for m in _mods if importlib.util.find_spec(m) is None]
    if _missing and os.environ.get("BOTS_REQUIRE_ADAPTER_DEPS") == "1":
        raise RuntimeError(f"adapter test dependencies missing: {', '.join(_missing)}")
    if _missing:
        collect_ignore_glob.append(_glob)
        _LEFT_OUT.append(f"{_glob} (needs {', '.join(_missing)})")


def pytest_report_header() -> list[str]:
    """Says which adapter test files were left out, and why."""
    if not _LEFT_OUT:
        return []
    return ["adapter tests left out, their frameworks are not installed: " + "; ".join(_LEFT_OUT)]


@pytest.fixture
def bots_server(tmp_path: Path) -> Iterator[object]:
    """A started in-process server with its own embedded store; stopped afterwards."""
    from bots_server._app import start_server
    from bots_server._settings import ServerSettings

    server = start_server(
        ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=str(tmp_path / "bots-data"),
            fsync=False,
            metrics_port=-1,
        )
    )
    try:
        yield server
    finally:
        server.stop(grace=0)


@pytest.fixture
def bots_target(bots_server: object) -> str:
    """host:port of `bots_server`."""
    return str(bots_server.address)  # type: ignore[attr-defined]


@pytest.fixture
def client(bots_target: str) -> Iterator[SelectorClient]:
    """A client connected to `bots_server`."""
    with SelectorClient(bots_target, timeout=10) as c:
        yield c

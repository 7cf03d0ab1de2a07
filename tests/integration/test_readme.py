"""The README's examples run as written against `bots serve` started without flags.

The server gets a free port through ``BOTS_PORT`` (and ``BOTS_METRICS_PORT=0``), and
the examples' ``127.0.0.1:50051`` is pointed at it, so a `bots serve` already holding
the default port (say, from following the README) does not break these tests.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bots_server._settings import ServerSettings
from service_procs import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_TARGET = "127.0.0.1:50051"


def block(after_heading: str, lang: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading) :]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block after {after_heading!r}"
    return match.group(1)


@dataclass
class DefaultServer:
    cwd: Path
    target: str


@pytest.fixture
def default_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DefaultServer]:
    """`bots serve` with no flags (./bots-data in a scratch directory), on a free port."""
    port = free_port()
    monkeypatch.setenv("BOTS_PORT", str(port))
    proc = ServerProcess(tmp_path / "unused", port)
    proc.start_in(tmp_path, [sys.executable, "-m", "bots_server", "serve"])
    yield DefaultServer(tmp_path, proc.address)
    assert proc.terminate() == 0


def test_readme_states_the_real_defaults() -> None:
    defaults = ServerSettings()
    text = README.read_text()
    assert f"{defaults.host}:{defaults.port}" == DEFAULT_TARGET
    assert f"bots serve                       # {DEFAULT_TARGET}" in text
    assert f"port {defaults.metrics_port}" in text


def test_quickstart_runs_as_written_and_again(default_server: DefaultServer) -> None:
    code = block("## Quickstart (Python)", "python")
    assert f'SelectorClient("{DEFAULT_TARGET}")' in code
    code = code.replace(DEFAULT_TARGET, default_server.target)
    for run in (1, 2):  # the second run goes on with the pool the first one made
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=default_server.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"steps={3 * run} ETR=")
    pool_dir = default_server.cwd / "bots-data" / "pools" / "quickstart"
    assert (pool_dir / "snapshot.bin").exists()


def test_cli_examples_run_as_written(default_server: DefaultServer) -> None:
    script = block("## CLI", "bash")
    bindir = Path(sys.executable).parent
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=default_server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bindir}:/usr/bin:/bin", "BOTS_TARGET": default_server.target},
    )
    assert out.returncode == 0, out.stderr
    assert '"task_count": 2' in out.stdout
    assert "math-copy" in out.stdout
    assert (default_server.cwd / "math.jsonl").read_text().count("\n") == 3


def stock_python() -> str:
    """The machine's Python 3 (not this venv's), whose `venv` brings its stock pip."""
    base = getattr(sys, "_base_executable", sys.executable)
    return base if os.path.exists(base) else "python3"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_test_commands_work_in_a_fresh_venv_with_its_stock_pip(tmp_path: Path) -> None:
    """The README's test commands, as written, in a new venv; `make test` on one file."""
    venv = tmp_path / "venv"
    subprocess.run([stock_python(), "-m", "venv", str(venv)], check=True, timeout=300)
    stock = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True, text=True
    ).stdout.split()[1]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BOTS_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"  # as if activated
    env["VIRTUAL_ENV"] = str(venv)
    commands = [line.split("  #")[0].strip() for line in block("## Tests", "bash").splitlines()]
    commands = [c for c in commands if c]
    assert commands[-1] == "make test"
    # The documented command shape, limited to one small test file.
    commands[-1] = "make test TESTS=tests/unit/test_client_import.py"
    for command in commands:
        out = subprocess.run(
            shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert out.returncode == 0, f"{command!r} (stock pip {stock}):\n{out.stderr[-3000:]}"
    assert re.search(r"\b\d+ passed\b", out.stdout), out.stdout[-2000:]

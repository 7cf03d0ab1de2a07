"""The README's examples run as written against `bots serve` started with its defaults."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_procs import ServerProcess, serving

README = Path(__file__).resolve().parents[2] / "README.md"


def block(after_heading: str, lang: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading) :]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block after {after_heading!r}"
    return match.group(1)


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[Path]:
    """`bots serve` with no flags (127.0.0.1:50051, ./bots-data) in a scratch directory."""
    if serving("127.0.0.1:50051"):
        pytest.fail("port 50051 is taken; the README examples need the default port")
    proc = ServerProcess(tmp_path / "unused", 50051)
    proc.start_in(tmp_path, [sys.executable, "-m", "bots_server", "serve"])
    yield tmp_path
    assert proc.terminate() == 0


def test_quickstart_runs_as_written(default_server: Path):
    code = block("## Quickstart (Python)", "python")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=default_server, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("steps=3 ETR=")
    assert (default_server / "bots-data" / "pools" / "quickstart" / "snapshot.bin").exists()


def test_cli_examples_run_as_written(default_server: Path):
    script = block("## CLI", "bash")
    bindir = Path(sys.executable).parent
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=default_server,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bindir}:/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert '"task_count": 2' in out.stdout
    assert "math-copy" in out.stdout
    assert (default_server / "math.jsonl").read_text().count("\n") == 3

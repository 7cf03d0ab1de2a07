"""The "Using it from the service" block of docs/similarity.md runs as written against a server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from doc_blocks import doc_block

DEFAULT_TARGET = "127.0.0.1:50051"


def test_the_service_example_runs_as_written(tmp_path: Path, target: str) -> None:
    block = doc_block("similarity.md", "<!-- doc-test: service -->")
    assert DEFAULT_TARGET in block
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, args in (("bots", "-m bots_server "), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args}"$@"\n', encoding="utf-8")
        shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "BOTS_TARGET": target}
    out = subprocess.run(
        ["bash", "-e", "-c", block.replace(DEFAULT_TARGET, target)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "6 new tasks added" in out.stdout
    assert out.stdout.rstrip().endswith("steps: 3")

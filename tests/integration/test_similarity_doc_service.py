"""The "Using it from the service" block of docs/similarity.md runs as written against a server."""

from __future__ import annotations

import os
from pathlib import Path

from doc_blocks import doc_block, run_block

DEFAULT_TARGET = "127.0.0.1:50051"


def test_the_service_example_runs_as_written(tmp_path: Path, target: str) -> None:
    block = doc_block("similarity.md", "<!-- doc-test: service -->")
    assert DEFAULT_TARGET in block
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    out = run_block(block.replace(DEFAULT_TARGET, target), tmp_path, env | {"BOTS_TARGET": target})
    assert out.returncode == 0, out.stderr[-4000:]
    assert "6 new tasks added" in out.stdout
    assert out.stdout.rstrip().endswith("steps: 3")

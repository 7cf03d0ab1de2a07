"""The commands of docs/similarity.md run as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from doc_blocks import doc_block


def test_the_similarity_page_commands_run_as_written(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "bots"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bots_server "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        ["bash", "-e", "-c", doc_block("similarity.md")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in (work / "tasks.jsonl").read_text().splitlines()]
    assert [len(r["embedding"]) for r in rows] == [2, 2, 2, 2]
    report = (work / "sim-similarity" / "report.md").read_text(encoding="utf-8")
    assert "Implicit evidence from task similarity" in report

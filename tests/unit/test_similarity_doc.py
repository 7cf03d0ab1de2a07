"""The commands of docs/similarity.md run as written."""

from __future__ import annotations

import json
import os
from pathlib import Path

from doc_blocks import doc_block, run_block


def test_the_similarity_page_commands_run_as_written(tmp_path: Path) -> None:
    out = run_block(doc_block("similarity.md"), tmp_path, dict(os.environ))
    assert out.returncode == 0, out.stderr[-4000:]
    work = tmp_path / "work"
    rows = [json.loads(line) for line in (work / "tasks.jsonl").read_text().splitlines()]
    assert [len(r["embedding"]) for r in rows] == [2, 2, 2, 2]
    report = (work / "sim-similarity" / "report.md").read_text(encoding="utf-8")
    assert "Implicit evidence from task similarity" in report

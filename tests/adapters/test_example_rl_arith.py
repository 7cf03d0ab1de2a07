"""The RL example end to end in its tiny configuration: server, torch adapter, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_quick_run_writes_curves_table_and_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "rl_arith" / "run.py"),
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "run 4/4: explicit_only seed 0" in proc.stdout  # progress is shown
    table = (out / "results.md").read_text()
    for label in ("BOTS (p* = 0.5)", "BOTS (p* = 0.25)", "Uniform", "BOTS explicit-only"):
        assert f"| {label} |" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {r["method"] for r in runs} == {"bots", "bots-p0.25", "uniform", "explicit_only"}
    for r in runs:
        # Every step's selection was reported and applied by the service.
        assert r["steps_applied"] == results["config"]["steps"] == len(r["etr"])

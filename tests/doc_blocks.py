"""Code blocks of the docs that tests run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_block(page: str, marker: str = "<!-- doc-test -->") -> str:
    """The bash block right after ``marker`` in ``docs/<page>``."""
    _, found, tail = (DOCS / page).read_text(encoding="utf-8").partition(marker)
    assert found, f"docs/{page} has no {marker} block"
    match = re.match(r"\s*```bash\n(.*?)```", tail, re.S)
    assert match, "no bash block right after the marker"
    return match.group(1)


def run_block(block: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs a bash block in ``tmp_path/work`` with ``bots`` and ``python`` (this interpreter) first on the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, args in (("bots", "-m bots_server "), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args}"$@"\n', encoding="utf-8")
        shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True, text=True, timeout=240
    )

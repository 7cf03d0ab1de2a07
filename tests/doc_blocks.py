"""Code blocks of the docs that tests run as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_block(page: str, marker: str = "<!-- doc-test -->") -> str:
    """The bash block right after ``marker`` in ``docs/<page>``."""
    _, found, tail = (DOCS / page).read_text(encoding="utf-8").partition(marker)
    assert found, f"docs/{page} has no {marker} block"
    match = re.match(r"\s*```bash\n(.*?)```", tail, re.S)
    assert match, "no bash block right after the marker"
    return match.group(1)

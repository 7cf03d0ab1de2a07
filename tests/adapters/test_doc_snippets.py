"""The adapter snippets of docs/adapters/*.md run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bots_client import SelectorClient

DOCS = Path(__file__).resolve().parents[2] / "docs" / "adapters"
HERE = Path(__file__).resolve().parent


def blocks(page: str) -> tuple[str, str]:
    """(the python block before the ``<!-- doc-test -->`` marker, the block after it)."""
    text = (DOCS / page).read_text()
    head, marker, tail = text.partition("<!-- doc-test -->")
    assert marker, f"{page} has no <!-- doc-test --> block"
    setup = re.findall(r"```python\n(.*?)```", head, re.S)[-1]
    match = re.match(r"\s*```python\n(.*?)```", tail, re.S)
    assert match, f"no python block right after the marker in {page}"
    return setup, match.group(1)


def run(code: str, cwd: Path, target: str) -> None:
    env = {
        **os.environ,
        "BOTS_TARGET": target,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "PYTHONWARNINGS": "ignore",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-4000:]


def test_the_torch_loop_snippet_runs_as_written(
    client: SelectorClient, bots_target: str, tmp_path: Path
) -> None:
    setup, change = blocks("torch.md")
    assert len(change.strip().splitlines()) <= 20
    run(setup + "\n" + change, tmp_path, bots_target)
    info = client.get_pool("math")
    assert info.steps_applied == 4  # 16 rows, 4 per batch: one epoch, every step closed
    assert info.selections_expired == 0


# The page's setup loads a hub model; this stands in for it (no downloads in tests).
TRL_SETUP = """
from tiny_trl import char_tokenizer, tiny_model
tokenizer = char_tokenizer()
model = tiny_model(tokenizer)
prompts = {"add-1": "1+1=", "add-2": "2+2=", "add-3": "3+3="}


def check(key, completion):
    return completion.strip().startswith(str(2 * int(key.split("-")[1])))
"""


@pytest.mark.timeout(300)
def test_the_trl_snippet_runs_as_written(
    client: SelectorClient, bots_target: str, tmp_path: Path
) -> None:
    _, change = blocks("trl.md")
    run(TRL_SETUP + "\n" + change, tmp_path, bots_target)
    info = client.get_pool("math")
    assert info.steps_applied == 2  # max_steps=2, one prompt per selection (TRL's defaults)
    assert (tmp_path / "out").is_dir()


def test_the_wait_window_snippets_of_long_runs_run_as_written(
    client: SelectorClient, bots_target: str, tmp_path: Path
) -> None:
    text = (DOCS / "long-runs.md").read_text()
    section = text.split("## The wait window", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(snippets) == 2
    prelude = (
        "import os\nfrom bots_client import SelectorClient\n"
        "client = SelectorClient(os.environ['BOTS_TARGET'])\n"
        "tasks = [f'task-{i}' for i in range(300)]\n"
    )
    run(prelude + "\n".join(snippets), tmp_path, bots_target)
    info = client.get_pool("math")
    assert info.config.selection_wait_seconds == 3600 and info.open_selections == 1

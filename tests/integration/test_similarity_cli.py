"""From prompts to a served similarity pool with the CLI: bots embed, bots pool create, select."""

from __future__ import annotations

import json
from pathlib import Path

from bots_client import SelectorClient, Task
from test_cli import bots


def write_prompts(path: Path, n: int) -> None:
    topics = ["Add the numbers {i} and {j}.", "Write a Python function that sorts {i} lists."]
    lines = [
        json.dumps({"key": f"q{i}", "prompt": topics[i % 2].format(i=i, j=i + 3)}) for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_embed_output_creates_a_similarity_pool_that_selects(target: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    write_prompts(tasks, 24)
    embedded = bots("embed", str(tasks), "--model", "hashing", "--dim", "8")
    assert embedded.returncode == 0, embedded.stderr
    created = bots(
        "pool", "create", "sim", "--preset", "similarity", "--tasks", str(tasks),
        "--chunk-size", "10", target=target,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "24 new tasks added" in created.stdout
    with SelectorClient(target) as client:
        for step in range(3):
            sel = client.select_batch("sim", 4, run_id="r", step=step)
            client.report_outcomes(
                "sim", {t.key: (2, 4) for t in sel.tasks}, selection_id=sel.selection_id,
                final=True,
            )  # fmt: skip
        assert client.get_pool("sim").steps_applied == 3

    exported = tmp_path / "sim.jsonl"
    out = bots("pool", "export", "sim", "--out", str(exported), target=target)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in exported.read_text().splitlines()[1:]]
    assert all(len(x["embedding"]) == 8 for x in lines)
    back = bots("pool", "import", str(exported), "--name", "copy", target=target)
    assert back.returncode == 0, back.stderr
    with SelectorClient(target) as client:
        assert client.get_pool("copy").task_count == 24


def test_a_similarity_pool_from_a_file_without_embeddings_is_refused(
    target: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    write_prompts(tasks, 4)
    out = bots("pool", "create", "sim", "--preset", "similarity", "--tasks", str(tasks),
               target=target)  # fmt: skip
    assert out.returncode != 0
    assert "needs task embeddings" in out.stderr


def test_a_csv_task_file_cannot_carry_embeddings(target: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.csv"
    tasks.write_text('key,embedding\na,"[1, 2]"\n', encoding="utf-8")
    out = bots("pool", "create", "p", "--tasks", str(tasks), target=target)
    assert out.returncode == 2
    assert "CSV task file cannot carry embeddings" in out.stderr


def test_the_client_sends_embeddings_from_tasks_and_mappings(target: str) -> None:
    with SelectorClient(target) as client:
        client.create_pool("p", preset="similarity")
        added = client.add_tasks(
            "p", [Task("a", embedding=(1.0, 0.0)), {"key": "b", "embedding": [0.0, 1.0]}]
        )
        assert added == 2
        (_, posteriors), *_ = list(client.export_posteriors("p"))
        assert [p.task.embedding != () for p in posteriors] == [True, True]

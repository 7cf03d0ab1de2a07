"""The similarity experiment of the simulation harness, end to end on a tiny configuration.

Plumbing only (every method ran on a families world, the table and findings
are there, the CLI writes the figure); the goals need the full size and are
reported in docs/similarity.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bots_eval import SimConfig, findings, make_world, run_experiment
from bots_eval._cli import main
from bots_eval._families import FAMILY_METHODS, family_model, summarize_families
from bots_eval._plots import plots_available

TINY = SimConfig(
    tasks=192, batch_size=16, steps=10, seeds=2, methods=("uniform",), sweeps=("similarity",)
)


def test_every_method_runs_on_a_families_world_and_is_summarized():
    exp = run_experiment(TINY, progress=False)
    assert set(exp.family_runs) == set(FAMILY_METHODS)
    assert all(len(runs) == TINY.seeds for runs in exp.family_runs.values())
    rows = summarize_families(exp)
    assert [r.method for r in rows] == list(FAMILY_METHODS)
    assert rows[0].ttb.mean == pytest.approx(1.0)  # uniform against itself
    keys = {f.key for f in findings(exp)}
    assert {"similarity_ttb", "both_vs_references"} <= keys


def test_family_world_embeddings_come_from_families_not_difficulty():
    model = family_model(TINY)
    assert model.families == 12
    world = make_world(model, TINY.tasks, 0)
    assert world.embedding is not None and world.family is not None and world.graph is not None
    assert world.embedding.shape == (TINY.tasks, model.embedding_dim)
    # The same families and noise whatever the difficulties: only the seed decides.
    other = make_world(model.__class__(**{**model.__dict__, "difficulty_sd": 1.0}), TINY.tasks, 0)
    np.testing.assert_array_equal(world.embedding, other.embedding)
    same = world.family[world.graph.neighbours] == world.family[:, None]
    assert same.mean() > 0.8


def test_the_cli_writes_the_similarity_table_and_figure(tmp_path: Path):
    out = tmp_path / "sim"
    args = ["--tasks", "128", "--batch-size", "16", "--steps", "6", "--seeds", "1",
            "--methods", "uniform", "--sweep", "similarity", "--out", str(out), "--quiet"]  # fmt: skip
    if not plots_available():
        args.append("--no-plots")
    assert main(args) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Implicit evidence from task similarity" in report
    if plots_available():
        assert (out / "similarity.png").stat().st_size > 0

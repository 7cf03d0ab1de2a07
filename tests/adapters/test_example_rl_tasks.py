"""The RL example (examples/rl_tasks) in a shortened run against a real server: plumbing and outputs.

Checks that every trained batch is the server's selection (asked again from the
server after the run) and that every rollout's reward reached the server
exactly once: replaying the evidence the example sent through bots_core from
the same tasks and config gives the posteriors the server exports.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from bots_client import EstimatorKind, SelectorClient

pytest.importorskip("transformers")
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rl_tasks"


@pytest.fixture(scope="module")
def example():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(EXAMPLE))
    import run

    yield run
    sys.path.remove(str(EXAMPLE))


def replay_posteriors(
    client: SelectorClient, pool: str, batches: list[list[tuple[str, float, float]]]
):  # type: ignore[no-untyped-def]
    """(alpha, beta) after applying ``batches`` once each, in order, with bots_core from scratch."""
    from bots_core import (
        EstimatorKind,
        PoolConfig,
        PoolState,
        SelectionMode,
        TaskSpec,
        aggregate,
        apply_step,
    )

    chunks = list(client.export_posteriors(pool))
    header = chunks[0][0]
    specs = [TaskSpec(p.task.key, p.task.weak, p.task.strong) for _, c in chunks for p in c]
    fields = {f.name: getattr(header.config, f.name) for f in dataclasses.fields(PoolConfig)}
    fields["mode"] = SelectionMode(fields["mode"].value)  # the client's enums, by value
    fields["estimator"] = EstimatorKind(fields["estimator"].value)
    state = PoolState(pool, PoolConfig(**fields))
    state.add_tasks(specs)
    for outcomes in batches:
        apply_step(state, aggregate(state, outcomes))
    return state.alpha.copy(), state.beta.copy()


@pytest.mark.timeout(120)
def test_short_run_trains_on_the_servers_selections_and_reports_every_reward_once(
    example, bots_target: str, client: SelectorClient, tmp_path: Path
) -> None:
    cfg = example.QUICK
    out = tmp_path / "out"
    results = example.run_all(cfg, out, server=bots_target, show_progress=False)

    for run in results["runs"]:
        pool, method = run["pool"], run["method"]
        n = cfg.rollouts
        batches = [a["outcomes"] for s in run["steps"] for a in s["audit"]]
        assert len(run["steps"]) == cfg.steps
        # One closed selection per SelectBatch: the service applied exactly what was selected.
        info = client.get_pool(pool)
        assert info.steps_applied == run["selections"] == len(batches)
        assert info.open_selections == 0
        # Every trained batch is the server's selection: asking the server again
        # for the same (run id, step) returns the stored selection.
        number, rollouts = 0, 0
        for s in run["steps"]:
            served = []
            for a in s["audit"]:
                again = client.select_batch(pool, cfg.batch_size, run_id=f"{pool}-run", step=number)
                number += 1
                assert again.replayed and again.selection_id == a["selection"]
                assert list(again.keys) == a["keys"] == [o[0] for o in a["outcomes"]]
                served += a["outcomes"]
            if method == "dapo":
                mixed = [k for k, succ, _ in served if 0 < succ < n]
                assert s["trained"] == mixed[: cfg.batch_size]
            else:
                assert s["trained"] == [k for k, _, _ in served]
            rollouts += sum(trials for _, _, trials in served)
            assert s["rollouts"] == rollouts  # the rollouts axis counts every reported rollout
        # Exactly once: replaying the sent evidence reproduces the exported posteriors.
        alpha, beta = replay_posteriors(client, pool, batches)
        exported = [p for _, chunk in client.export_posteriors(pool) for p in chunk]
        np.testing.assert_allclose([p.alpha for p in exported], alpha, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose([p.beta for p in exported], beta, rtol=1e-9, atol=1e-9)
        # ...and dropping or doubling one report would not.
        doubled = replay_posteriors(client, pool, batches[:1] + batches)
        assert not np.allclose(doubled[0], alpha) or not np.allclose(doubled[1], beta)

    import report

    table = (out / "results.md").read_text()
    for method in cfg.methods:
        assert f"| {report.label(method)} |" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["seed"]) for r in saved["runs"]} == {
        (m, s) for m in cfg.methods for s in cfg.seeds
    }


@pytest.mark.timeout(120)
def test_similarity_comparison_sends_embeddings_to_similarity_pools_and_reports_every_method(
    example, bots_target: str, client: SelectorClient, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(example.QUICK, methods=example.SIMILARITY_METHODS, trl_steps=0)
    out = tmp_path / "out"
    results = example.run_all(cfg, out, server=bots_target, show_progress=False)

    expected = {
        "similarity": EstimatorKind.SIMILARITY,
        "bots+similarity": EstimatorKind.BOTH,
        "bots": EstimatorKind.INTERPOLATION,
    }
    for run in results["runs"]:
        info = client.get_pool(run["pool"])
        assert info.steps_applied == cfg.steps
        if run["method"] in expected:
            assert info.config.estimator is expected[run["method"]]
        # Only the pools whose estimator uses them carry embeddings.
        tasks = [p.task for _, chunk in client.export_posteriors(run["pool"]) for p in chunk]
        has = {bool(t.embedding) for t in tasks}
        assert has == {example.needs_embeddings(run["method"])}

    import report

    table = (out / "results.md").read_text()
    for method in cfg.methods:
        assert f"| {report.label(method)} |" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

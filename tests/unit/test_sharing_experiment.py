"""The sharing experiment of the simulation harness, end to end on a tiny configuration.

These tests check the plumbing (every run is there, each trainer is its own run
of the engine, the ratios are computed against the right separate pools), not
the goals: those need the full size and are reported in docs/simulation.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import PoolConfig
from bots_eval import (
    ARMS,
    METHODS,
    EngineBackend,
    Experiment,
    Learner,
    SimConfig,
    World,
    findings,
    make_world,
    run_experiment,
    run_group,
    run_single,
    summarize_sharing,
)
from bots_eval._sharing import ABLATION_ARMS, head_starts, reach_step, sharing_plan

TINY = SimConfig(
    tasks=160,
    batch_size=16,
    steps=12,
    seeds=2,
    methods=("uniform",),
    sweeps=("sharing_ablation",),
    sharing_runs=(1, 2, 4),
)


@pytest.fixture(scope="module")
def experiment() -> Experiment:
    return run_experiment(TINY, progress=False)


def test_every_run_of_the_plan_is_there(experiment: Experiment) -> None:
    assert sharing_plan(TINY) == [("same", 1), ("same", 2), ("same", 4), ("mixed", 2), ("mixed", 4)]
    for seed in range(TINY.seeds):
        groups = [g for g in experiment.sharing_runs if g.seed == seed]
        alone = sorted((g.trainers[0], g.head_start[0]) for g in groups if g.arm == "separate")
        # Trainers 0..3 from the same start, and the strong (odd) trainers of "mixed".
        assert alone == [(0, 0.0), (1, 0.0), (1, 2.0), (2, 0.0), (3, 0.0), (3, 2.0)]
        shared = {(g.scenario, len(g.trainers), g.arm): g for g in groups if g.arm != "separate"}
        expected = {("same", 1, "shared")} | {
            (scenario, k, arm)
            for scenario, k in sharing_plan(TINY)
            if k > 1
            for arm in ("shared", *ABLATION_ARMS)
        }
        assert set(shared) == expected
        for (scenario, k, _), g in shared.items():
            assert g.trainers == tuple(range(k))
            assert list(g.head_start) == head_starts(scenario, k, TINY.head_start)
            assert g.accuracy.shape == (k, TINY.steps + 1)
            assert g.select_seconds.shape == (k, TINY.steps)


def test_every_group_gets_a_ratio_over_all_seeds(experiment: Experiment) -> None:
    rows = summarize_sharing(experiment)
    keys = {(r.scenario, r.runs, r.arm, r.group) for r in rows}
    assert ("same", 1, "shared", "all") in keys
    for k in (2, 4):
        for arm in ("shared", *ABLATION_ARMS):
            assert ("same", k, arm, "all") in keys
            assert ("mixed", k, arm, "weak") in keys and ("mixed", k, arm, "strong") in keys
    assert len(keys) == len(rows) == 1 + 2 * 4 + 2 * 4 * 2
    for r in rows:
        assert r.ratio.count + r.ratio.censored == TINY.seeds
        assert r.steps_separate.count == TINY.seeds
        # The target is the group's mean accuracy at the reach step: trainers get there
        # around that step, some after it.
        assert 0 < r.steps_separate.mean <= TINY.steps
        assert r.target.count == TINY.seeds and reach_step(TINY.steps) == 8
        assert r.select_ms.mean > 0 and r.select_ms_separate.mean > 0
    strong = next(r for r in rows if r.scenario == "mixed" and r.group == "strong")
    weak = next(r for r in rows if r.scenario == "mixed" and r.group == "weak")
    assert strong.target.mean > weak.target.mean  # a head start of 2 logits shows


def test_one_run_on_a_shared_pool_is_the_same_as_its_own_pool(experiment: Experiment) -> None:
    for seed in range(TINY.seeds):
        one = next(
            g for g in experiment.sharing_runs if g.seed == seed and g.scenario == "same"
            and len(g.trainers) == 1
        )  # fmt: skip
        alone = next(
            g for g in experiment.sharing_runs if g.seed == seed and g.arm == "separate"
            and g.trainers == (0,) and g.head_start == (0.0,)
        )  # fmt: skip
        assert np.array_equal(one.accuracy, alone.accuracy)
    row = next(r for r in summarize_sharing(experiment) if r.runs == 1)
    assert row.ratio.mean == 1.0 and row.final_gain.mean == 0.0


def test_the_report_judges_both_goals(experiment: Experiment) -> None:
    keys = {f.key for f in findings(experiment)}
    assert {"sharing_same_model", "sharing_mixed"} <= keys


def test_each_trainer_selects_and_reports_as_its_own_run() -> None:
    world = make_world(TINY.model, TINY.tasks, seed=1)
    opened: list[EngineBackend] = []

    def spy(name: str, config: PoolConfig, w: World) -> EngineBackend:
        opened.append(EngineBackend(name, config, w))
        return opened[-1]

    run_group(METHODS["bots"], world, TINY, 1, "shared", [0.0, 2.0, 0.0], spy)
    (pool,) = opened
    runs = pool.state.runs
    assert sorted(runs) == ["trainer-0", "trainer-1", "trainer-2"]
    assert all(r.steps == TINY.steps for r in runs.values())
    # The strong run's own capability is above the weak runs'.
    assert runs["trainer-1"].capability > max(
        runs["trainer-0"].capability, runs["trainer-2"].capability
    )
    opened.clear()
    run_group(METHODS["bots"], world, TINY, 1, "one_run", [0.0, 0.0], spy)
    assert list(opened[0].state.runs) == ["shared"]
    assert opened[0].state.runs["shared"].steps == 2 * TINY.steps


def test_a_single_trainer_alone_is_the_single_run() -> None:
    world = make_world(TINY.model, TINY.tasks, seed=2)
    single = run_single(METHODS["bots"], world, TINY, 2)
    group = run_group(METHODS["bots"], world, TINY, 2, "separate", [0.0])
    assert np.array_equal(group.accuracy[0], single.accuracy)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_ablation_arms_set_forgetting_per_run_step_or_per_pool_step(k: int) -> None:
    cfg = PoolConfig(forgetting=0.1, implicit_weight=0.1)
    per_run = ARMS["one_run_per_run_step"].config(cfg, k)
    assert math.isclose((1 - per_run.forgetting) ** k, 0.9, rel_tol=1e-12)
    assert math.isclose(per_run.implicit_weight * k, 0.1, rel_tol=1e-12)
    # The engine turns lambda into 1 - (1 - lambda) ** (1 / K) with K runs: the
    # per-pool-step arm sets the config so that this gives back 0.1.
    per_pool = ARMS["runs_per_pool_step"].config(cfg, k)
    assert math.isclose(1 - (1 - per_pool.forgetting) ** (1 / k), 0.1, rel_tol=1e-12)
    assert math.isclose(per_pool.implicit_weight / k, 0.1, rel_tol=1e-12)
    assert ARMS["shared"].config(cfg, k) == cfg


def test_a_head_start_raises_the_starting_accuracy() -> None:
    world = make_world(TINY.model, TINY.tasks, seed=0)
    assert Learner(world, 2.0).heldout_accuracy() > Learner(world).heldout_accuracy() + 0.1


def test_the_mixed_scenario_needs_an_even_number_of_runs() -> None:
    cfg = SimConfig(sharing_runs=(1, 3, 4))
    assert sharing_plan(cfg) == [("same", 1), ("same", 3), ("same", 4), ("mixed", 4)]
    with pytest.raises(ValueError, match="sharing runs"):
        SimConfig(sharing_runs=(0, 2))

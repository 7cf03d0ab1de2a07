"""The simulation harness reproduces the paper's qualitative findings through the real engine.

One small experiment (5 seeds, fixed) is run once for the module. Every margin
below is a fraction of the effect the data show at these seeds; the per-seed
numbers are in the comments so a failure can be judged against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import bots_eval._runner
import grpc
import numpy as np
import pytest
from bots_core import PoolConfig
from bots_eval import (
    METHODS,
    Experiment,
    GrpcBackend,
    PoolBackend,
    SimConfig,
    World,
    findings,
    main,
    make_world,
    run_experiment,
    run_group,
    run_single,
)
from bots_eval._summary import early_steps, late_steps, trainer_steps
from bots_server._app import RunningServer

SMALL = SimConfig(
    tasks=2048,
    batch_size=32,
    rollouts=16,
    steps=150,
    seeds=5,
    methods=("uniform", "explicit_only", "bots"),
    sweeps=("rho", "trainers"),
    rhos=(0.1, 1.0),
    trainers=4,
    trainer_methods=("bots",),
)


@pytest.fixture(scope="module")
def experiment() -> Experiment:
    return run_experiment(SMALL, progress=False)


def per_seed(exp: Experiment, a: str, b: str, window: slice) -> np.ndarray:
    """ETR(a) - ETR(b) over ``window`` of the steps, one value per seed."""
    return np.array(
        [
            x.etr[window].mean() - y.etr[window].mean()
            for x, y in zip(exp.runs[a], exp.runs[b], strict=True)
        ]
    )


def test_bots_effective_task_ratio_exceeds_uniform(experiment: Experiment) -> None:
    # Observed per seed: +0.20 .. +0.23.
    diff = per_seed(experiment, "bots", "uniform", slice(None))
    assert np.all(diff > 0.1), diff
    assert diff.mean() > 0.15


def test_explicit_only_starts_no_better_than_uniform(experiment: Experiment) -> None:
    early = slice(0, early_steps(SMALL.steps))
    # Observed per seed: -0.07 .. +0.05, mean -0.02: a cold start, no better than uniform.
    explicit = per_seed(experiment, "explicit_only", "uniform", early)
    assert explicit.mean() < 0.05, explicit
    # Over the same window BOTS, whose implicit evidence covers unseen tasks,
    # is already well ahead (observed +0.13 .. +0.19), so the window is not too short.
    bots = per_seed(experiment, "bots", "uniform", early)
    assert np.all(bots > 0.08), bots
    assert bots.mean() - explicit.mean() > 0.1


def test_very_large_rho_lowers_late_training_etr(experiment: Experiment) -> None:
    late = slice(-late_steps(SMALL.steps), None)
    # Observed per seed: -0.067 .. -0.010, mean -0.035.
    diff = per_seed(experiment, "rho=1", "rho=0.1", late)
    assert diff.mean() < -0.015, diff
    assert np.sum(diff < 0) >= 4, diff


def test_trainers_sharing_a_pool_as_one_run_start_faster(experiment: Experiment) -> None:
    # As one run (lambda per pool step: the pool before runs existed), sharing pays
    # during the cold start (observed early ETR +0.08 .. +0.12); over the whole
    # budget the gain is within about one percent of the steps (see
    # docs/simulation.md), so only the start is asserted.
    e = early_steps(SMALL.steps)
    groups = {
        arm: sorted((g for g in experiment.trainer_runs if g.arm == arm), key=lambda g: g.seed)
        for arm in ("one_run", "separate")
    }
    gain = np.array(
        [
            s.etr[:, :e].mean() - p.etr[:, :e].mean()
            for s, p in zip(groups["one_run"], groups["separate"], strict=True)
        ]
    )
    assert np.all(gain > 0.04), gain
    shared = np.array(trainer_steps(experiment, "bots", "one_run"))
    separate = np.array(trainer_steps(experiment, "bots", "separate"))
    assert abs((shared - separate).mean()) < 0.05 * separate.mean()


def test_report_verdicts_agree_with_the_data(experiment: Experiment) -> None:
    verdicts = {f.key: f.held for f in findings(experiment)}
    assert verdicts["bots_etr"] and verdicts["cold_start"]
    # The report calls a finding held only when its 95 % interval excludes zero. At
    # this test's size (5 seeds, 150 steps) the large-rho effect points the right way
    # (asserted above) but its interval can include zero, depending on the draws.
    # Sharing with run ids is measured in docs/simulation.md, not asserted here.
    assert {"large_rho", "sharing", "sharing_one_run"} <= set(verdicts)


TINY = SimConfig(tasks=160, batch_size=16, steps=12, seeds=1, sweeps=(), trainers=2)


@pytest.mark.parametrize("method", ["bots", "uniform", "implicit_only", "easy_to_hard"])
def test_server_path_gives_the_same_selections_as_in_process(
    server: RunningServer, method: str
) -> None:
    world = make_world(TINY.model, TINY.tasks, seed=3)
    local = run_single(METHODS[method], world, TINY, 3, record_selections=True)
    with grpc.insecure_channel(server.address) as channel:

        def remote_pool(name: str, config: PoolConfig, w: World) -> PoolBackend:
            return GrpcBackend(channel, name, config, w)

        remote = run_single(METHODS[method], world, TINY, 3, remote_pool, record_selections=True)
    assert local.selections is not None and remote.selections is not None
    assert len(local.selections) == TINY.steps
    for a, b in zip(local.selections, remote.selections, strict=True):
        assert a.tolist() == b.tolist()
    assert np.array_equal(local.accuracy, remote.accuracy)
    assert np.array_equal(local.estimate, remote.estimate)


@pytest.mark.parametrize(
    ("arm", "head_start"),
    [
        ("shared", [0.0, 0.0]),  # each trainer its own run (run_id on every call)
        ("shared", [0.0, 2.0, 0.0, 2.0]),  # runs of different strength: moved draws
        ("one_run", [0.0, 0.0]),  # all trainers one run id, sharing its steps
        ("runs_per_pool_step", [0.0, 2.0]),
    ],
)
def test_server_path_interleaves_trainers_on_one_shared_pool_like_in_process(
    server: RunningServer, arm: str, head_start: list[float]
) -> None:
    world = make_world(TINY.model, TINY.tasks, seed=4)
    local = run_group(METHODS["bots"], world, TINY, 4, arm, head_start)
    with grpc.insecure_channel(server.address) as channel:

        def remote_pool(name: str, config: PoolConfig, w: World) -> PoolBackend:
            return GrpcBackend(channel, name, config, w)

        remote = run_group(METHODS["bots"], world, TINY, 4, arm, head_start, remote_pool)
    assert np.array_equal(local.accuracy, remote.accuracy)
    assert np.array_equal(local.etr, remote.etr)


class KeptPool(GrpcBackend):
    """A server pool that outlives its run, to be inspected and then deleted."""

    def close(self) -> None:
        pass

    def delete(self) -> None:
        super().close()


def test_server_pool_lists_each_trainer_as_a_run(server: RunningServer) -> None:
    from bots_api.v1 import selector_pb2 as pb

    world = make_world(TINY.model, TINY.tasks, seed=5)
    pools: list[KeptPool] = []
    with grpc.insecure_channel(server.address) as channel:

        def remote_pool(name: str, config: PoolConfig, w: World) -> PoolBackend:
            pools.append(KeptPool(channel, name, config, w))
            return pools[-1]

        run_group(METHODS["bots"], world, TINY, 5, "shared", [0.0, 2.0, 0.0], remote_pool)
        (pool,) = pools
        info = pool.stub.GetPool(pb.GetPoolRequest(pool=pool.pool), timeout=10).pool
        pool.delete()
    runs = {r.run_id: r for r in info.runs}
    assert sorted(runs) == ["trainer-0", "trainer-1", "trainer-2"]
    assert all(r.steps == TINY.steps for r in runs.values())
    assert runs["trainer-1"].capability > runs["trainer-0"].capability


def test_server_pools_are_deleted_after_the_run(server: RunningServer) -> None:
    from bots_api.v1 import selector_pb2 as pb
    from bots_api.v1 import selector_pb2_grpc

    args = ["--server", server.address, "--tasks", "64", "--batch-size", "8", "--steps", "4",
            "--seeds", "1", "--methods", "bots", "--sweep", "rho", "--no-plots", "--quiet",
            "--out", str(Path(server.settings.data_dir).parent / "out")]  # fmt: skip
    assert main(args) == 0
    with grpc.insecure_channel(server.address) as channel:
        stub = selector_pb2_grpc.TaskSelectorStub(channel)  # type: ignore[no-untyped-call]
        assert list(stub.ListPools(pb.ListPoolsRequest(), timeout=10).pools) == []


def test_command_writes_the_figures_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["--tasks", "256", "--batch-size", "16", "--steps", "30", "--seeds", "2",
            "--trainers", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        ["etr.png", "accuracy.png", "ttb_bsf.png", "estimator.png", "sweeps.png", "trainers.png"]
    )
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# BOTS simulation report")
    for section in ("## Findings", "## Methods", "TTB(100 %)", "Pearson", "## Sweep over",
                    "trainers: one shared pool vs separate pools"):  # fmt: skip
        assert section in report
    for name in pngs:
        assert f"]({name})" in report
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["config"]["seeds"] == 2
    assert {"bots", "uniform", "easy_to_hard"} <= set(results["variants"])


def test_command_runs_the_sharing_experiment_with_its_figure(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["--tasks", "160", "--batch-size", "16", "--steps", "12", "--seeds", "2",
            "--methods", "uniform", "--sweep", "sharing", "--sharing-runs", "1,2",
            "--head-start", "1.5", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert (out / "sharing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Sharing one pool across runs" in report and "](sharing.png)" in report
    assert "+1.5 logits stronger" in report
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = {(r["scenario"], r["runs"], r["arm"], r["group"]) for r in results["sharing"]}
    assert rows == {
        ("same", 1, "shared", "all"),
        ("same", 2, "shared", "all"),
        ("mixed", 2, "shared", "weak"),
        ("mixed", 2, "shared", "strong"),
    }
    assert main([*args[:-3], "--sharing-runs", "0,2", "--out", str(tmp_path / "x")]) == 2


def test_command_rejects_unknown_methods_and_bad_sizes(tmp_path: Path) -> None:
    assert main(["--methods", "bots,nope", "--out", str(tmp_path)]) == 2
    assert main(["--tasks", "8", "--batch-size", "16", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_command_reports_an_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 1 of localhost; the connection attempt times out.
    monkeypatch.setattr(bots_eval._runner, "CONNECT_TIMEOUT_S", 0.5)
    args = ["--server", "127.0.0.1:1", "--tasks", "32", "--batch-size", "4", "--steps", "2",
            "--seeds", "1", "--sweep", "none", "--quiet", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 1


def test_bots_simulate_is_the_same_command(tmp_path):
    from bots_server._cli import main as bots_main

    assert bots_main(["simulate", "--methods", "bots,nope", "--out", str(tmp_path)]) == 2
    assert (
        bots_main(["simulate", "--tasks", "8", "--batch-size", "16", "--out", str(tmp_path)]) == 2
    )

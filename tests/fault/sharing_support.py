"""Helpers for the sharing tests: trainer subprocesses and the serial replay they are checked against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from bots_client import SelectorClient, Task
from bots_core import PoolConfig, PoolState, TaskSpec, aggregate, apply_step

WORKER = Path(__file__).with_name("sharing_worker.py")
N_TASKS = 300


def task_specs() -> list[TaskSpec]:
    return [TaskSpec(f"task-{i}", (i % 7) / 10, 0.4 + (i % 7) / 10) for i in range(N_TASKS)]


def create_pool(target: str, name: str) -> None:
    with SelectorClient(target, timeout=30) as client:
        client.create_pool(
            name, [Task(s.key, weak=s.weak, strong=s.strong) for s in task_specs()], preset="bots"
        )


def start_workers(
    targets: list[str], pool: str, workers: int, steps: int, out_dir: Path, *, lb: bool = False
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    procs = []
    for w in range(workers):
        out = out_dir / f"worker-{w}.json"
        cmd = [
            sys.executable,
            str(WORKER),
            "--targets",
            ",".join(targets),
            "--pool",
            pool,
            "--run",
            f"trainer-{w}",
            "--steps",
            str(steps),
            "--seed",
            str(w),
            "--out",
            str(out),
        ]
        if lb:
            cmd.append("--lb")
        procs.append((subprocess.Popen(cmd, stderr=subprocess.PIPE), out))
    return procs


def wait_workers(procs: list[tuple[subprocess.Popen[bytes], Path]], timeout: float) -> list[dict]:
    records: list[dict] = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err.decode()[-2000:]}"
        records.extend(json.loads(out.read_text())["applied"])
    return records


def serial_replay(records: list[dict]) -> PoolState:
    """Applies every recorded step, in the order of the versions the service gave them."""
    versions = sorted(r["version"] for r in records)
    assert versions == list(range(1, len(records) + 1)), "versions are not one total order"
    state = PoolState("replay", PoolConfig())
    state.add_tasks(task_specs())
    for r in sorted(records, key=lambda r: r["version"]):
        evidence = aggregate(state, [(k, s, t) for k, (s, t) in r["evidence"].items()])
        apply_step(state, evidence, run=r["run"])  # each trainer is a run of its own
    return state


def assert_service_matches_replay(target: str, pool: str, records: list[dict]) -> None:
    expected = serial_replay(records)
    with SelectorClient(target, timeout=30) as client:
        info = client.get_pool(pool)
        assert info.steps_applied == len(records)
        # Every trainer is a run of the pool, with the steps and capability mu_r of the replay.
        runs = {r.run_id: r for r in info.runs}
        assert set(runs) == set(expected.runs)
        for run_id, rs in expected.runs.items():
            assert runs[run_id].steps == rs.steps
            np.testing.assert_allclose(runs[run_id].capability, rs.capability, atol=1e-12)
        alpha, beta = {}, {}
        for _header, posteriors in client.export_posteriors(pool):
            for tp in posteriors:
                alpha[tp.task.key] = tp.alpha
                beta[tp.task.key] = tp.beta
    got_a = np.array([alpha[k] for k in expected.keys])
    got_b = np.array([beta[k] for k in expected.keys])
    np.testing.assert_allclose(got_a, expected.alpha, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_b, expected.beta, rtol=0, atol=1e-9)

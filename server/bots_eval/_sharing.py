"""The sharing experiment: K runs on one pool against K separate pools, same-model and mixed.

Scenarios (docs/simulation.md, "Sharing one pool across runs"):

* "same": K trainers start as the same model.
* "mixed": the odd-numbered trainers start ``head_start`` logits stronger
  (as when a 1.5B and a 7B run share a pool); K even.

Every run is measured against the same trainer with a pool of its own: the
*target* of a group (same model; or the weak, or the strong half) is the
held-out accuracy its separate-pool trainers reach, on average, after
``REACH_FRACTION`` of the budget. A run's cost is the steps it needs to reach
that target; the ratio shared / separate of the group's mean steps is
computed per seed (< 1: sharing saves steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bots_eval._learner import World
from bots_eval._methods import METHODS
from bots_eval._metrics import Interval, mean_ci, steps_to_reach
from bots_eval._progress import Progress
from bots_eval._runner import (
    BackendFactory,
    Experiment,
    SimConfig,
    TrainerGroupResult,
    run_group,
)

SCENARIOS: tuple[str, ...] = ("same", "mixed")
SHARING_METHOD = "bots"
# Arms always run, and those "sharing_ablation" adds (see bots_eval.ARMS).
SHARING_ARMS: tuple[str, ...] = ("shared",)
ABLATION_ARMS: tuple[str, ...] = ("one_run", "one_run_per_run_step", "runs_per_pool_step")
# The target is what separate pools reach after this share of the budget; the
# rest of the budget leaves room to measure runs that need more steps (up to
# 1 / REACH_FRACTION = 1.5 times as many).
REACH_FRACTION = 2.0 / 3.0
SEPARATE = "separate"


def sharing_enabled(cfg: SimConfig) -> bool:
    """Whether the configuration asks for the sharing experiment."""
    return bool({"sharing", "sharing_ablation"} & set(cfg.sweeps))


def sharing_arms(cfg: SimConfig) -> tuple[str, ...]:
    """The shared arms to run (the ablation arms only with "sharing_ablation")."""
    if "sharing_ablation" in cfg.sweeps:
        return SHARING_ARMS + ABLATION_ARMS
    return SHARING_ARMS


def head_starts(scenario: str, runs: int, head_start: float) -> list[float]:
    """Each trainer's head start: none, or ``head_start`` for odd trainers when mixed."""
    if scenario == "same":
        return [0.0] * runs
    return [head_start if j % 2 else 0.0 for j in range(runs)]


def sharing_plan(cfg: SimConfig) -> list[tuple[str, int]]:
    """(scenario, K) pairs: every K for "same", every even K for "mixed"."""
    ks = sorted(set(cfg.sharing_runs))
    return [("same", k) for k in ks] + [("mixed", k) for k in ks if k % 2 == 0]


def _separate_trainers(cfg: SimConfig) -> list[tuple[int, float]]:
    needed = {
        (j, h)
        for scenario, k in sharing_plan(cfg)
        for j, h in enumerate(head_starts(scenario, k, cfg.head_start))
    }
    return sorted(needed)


def _arms_for(cfg: SimConfig, runs: int) -> tuple[str, ...]:
    # With one run every shared arm is the same pool as "shared".
    return SHARING_ARMS if runs == 1 else sharing_arms(cfg)


def sharing_steps(cfg: SimConfig) -> int:
    """Trainer-steps of the sharing experiment per seed (for progress)."""
    separate = len(_separate_trainers(cfg))
    shared = sum(k * len(_arms_for(cfg, k)) for _, k in sharing_plan(cfg))
    return (separate + shared) * cfg.steps


def run_sharing(
    world: World, cfg: SimConfig, seed: int, make_backend: BackendFactory, bar: Progress
) -> list[TrainerGroupResult]:
    """One seed of the sharing experiment (BOTS preset, default settings).

    Separate-pool trainers are run once each, as one-trainer groups of
    scenario "separate": trainer j's separate run does not depend on K.
    """
    method = METHODS[SHARING_METHOD]
    out = []
    for j, h in _separate_trainers(cfg):
        bar.set_label(f"seed {seed} sharing: trainer {j} (+{h:g}) alone")
        out.append(
            run_group(
                method,
                world,
                cfg,
                seed,
                SEPARATE,
                [h],
                make_backend,
                trainers=[j],
                scenario=SEPARATE,
            )
        )
        bar.update(cfg.steps)
    for scenario, k in sharing_plan(cfg):
        for arm in _arms_for(cfg, k):
            bar.set_label(f"seed {seed} sharing: {scenario} x{k} {arm}")
            starts = head_starts(scenario, k, cfg.head_start)
            out.append(
                run_group(method, world, cfg, seed, arm, starts, make_backend, scenario=scenario)
            )
            bar.update(cfg.steps * k)
    return out


@dataclass(frozen=True)
class SharingRow:
    """One group of one arm at one K, against its separate pools (95 % intervals over seeds).

    Attributes:
        scenario: "same" or "mixed".
        runs: K, the runs sharing the pool.
        arm: The shared arm.
        group: "all" (same-model), "weak" or "strong" (mixed).
        target: Held-out accuracy the group's separate pools reach after
            ``REACH_FRACTION`` of the budget (the target).
        steps_separate: Mean steps of the group's trainers to the target, separate pools.
        steps_shared: The same on the shared pool.
        ratio: steps_shared / steps_separate, per seed.
        final_gain: Final held-out accuracy, shared minus separate (group means).
        select_ms: Median milliseconds per selection on the shared pool.
        select_ms_separate: The same with separate pools.
    """

    scenario: str
    runs: int
    arm: str
    group: str
    target: Interval
    steps_separate: Interval
    steps_shared: Interval
    ratio: Interval
    final_gain: Interval
    select_ms: Interval
    select_ms_separate: Interval


def reach_step(steps: int) -> int:
    """The step after which separate pools' accuracy sets the target."""
    return max(1, math.ceil(round(REACH_FRACTION * steps, 9)))


def _groups(scenario: str, head: tuple[float, ...]) -> list[tuple[str, list[int]]]:
    if scenario == "same":
        return [("all", list(range(len(head))))]
    return [
        ("weak", [i for i, h in enumerate(head) if h == 0.0]),
        ("strong", [i for i, h in enumerate(head) if h != 0.0]),
    ]


def summarize_sharing(exp: Experiment) -> list[SharingRow]:
    """The sharing experiment's rows, by scenario, K, arm, then group."""
    runs = exp.sharing_runs
    if not runs:
        return []
    separate = {(g.seed, g.trainers[0], g.head_start[0]): g for g in runs if g.scenario == SEPARATE}
    m = reach_step(exp.config.steps)
    keys = list(dict.fromkeys((g.scenario, len(g.trainers), g.arm) for g in runs
                              if g.scenario != SEPARATE))  # fmt: skip
    rows = []
    for scenario, k, arm in keys:
        groups = sorted(
            (g for g in runs if (g.scenario, len(g.trainers), g.arm) == (scenario, k, arm)),
            key=lambda g: g.seed,
        )
        for name, members in _groups(scenario, groups[0].head_start):
            per_seed: dict[str, list[float]] = {
                "target": [], "sep": [], "shared": [], "ratio": [], "gain": [], "ms": [],
                "ms_sep": [],
            }  # fmt: skip
            for g in groups:
                alone = [separate[(g.seed, g.trainers[i], g.head_start[i])] for i in members]
                target = float(np.mean([a.accuracy[0, m] for a in alone]))
                sep = float(np.mean([steps_to_reach(a.accuracy[0], target) for a in alone]))
                shared = float(np.mean([steps_to_reach(g.accuracy[i], target) for i in members]))
                per_seed["target"].append(target)
                per_seed["sep"].append(sep)
                per_seed["shared"].append(shared)
                per_seed["ratio"].append(shared / sep if sep > 0 else math.nan)
                per_seed["gain"].append(
                    float(g.accuracy[members, -1].mean())
                    - float(np.mean([a.accuracy[0, -1] for a in alone]))
                )
                per_seed["ms"].append(1e3 * float(np.median(g.select_seconds[members])))
                per_seed["ms_sep"].append(
                    1e3 * float(np.median(np.concatenate([a.select_seconds[0] for a in alone])))
                )
            cis = {key: mean_ci(values) for key, values in per_seed.items()}
            rows.append(
                SharingRow(
                    scenario=scenario,
                    runs=k,
                    arm=arm,
                    group=name,
                    target=cis["target"],
                    steps_separate=cis["sep"],
                    steps_shared=cis["shared"],
                    ratio=cis["ratio"],
                    final_gain=cis["gain"],
                    select_ms=cis["ms"],
                    select_ms_separate=cis["ms_sep"],
                )
            )
    return rows

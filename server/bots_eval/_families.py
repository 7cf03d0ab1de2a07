"""The similarity experiment: tasks in related families, implicit evidence with and without references.

The world (docs/similarity.md): the tasks come in families of about
``family_size`` tasks that share a skill and most of their difficulty; each
task has an embedding drawn from its family's centroid plus noise, never from
a difficulty. The methods compared:

* ``uniform``: the baseline.
* ``explicit_only``: BOTS with implicit weight 0 (no estimator).
* ``bots``: BOTS with the reference interpolation (needs reference models).
* ``similarity``: BOTS with the similarity plug-in only (no references).
* ``bots+similarity``: both estimators, averaged by their confidences.

A method's cost is the steps it needs to reach uniform's final held-out
accuracy, over uniform's steps (TTB(100 %), per seed; < 1 is faster).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from bots_core import PRESETS

from bots_eval._learner import LearnerModel, make_world
from bots_eval._methods import RHO, Method
from bots_eval._metrics import Interval, mean_ci, steps_to_reach, time_to_baseline
from bots_eval._progress import Progress
from bots_eval._runner import BackendFactory, Experiment, RunResult, SimConfig, run_single

FAMILY_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("uniform", "Random (uniform)", PRESETS["uniform"]),
        Method("explicit_only", f"Explicit only, {RHO}=0", PRESETS["explicit_only"]),
        Method("bots", "BOTS, reference interpolation", PRESETS["bots"]),
        Method("similarity", "BOTS, similarity (no references)", PRESETS["similarity"]),
        Method("bots+similarity", "BOTS, interpolation + similarity", PRESETS["bots+similarity"]),
    )
}
# Goals (docs/similarity.md): similarity without references reaches uniform's
# final accuracy in at most this share of uniform's steps ...
SIMILARITY_GOAL = 0.75
# ... and both estimators need at most this many times the steps of the
# references alone to reach uniform's final accuracy.
BOTH_GOAL = 1.0


def similarity_enabled(cfg: SimConfig) -> bool:
    """Whether the configuration asks for the similarity experiment."""
    return "similarity" in cfg.sweeps


def family_model(cfg: SimConfig) -> LearnerModel:
    """The learner model of the experiment: ``cfg.model`` with families of ``cfg.family_size``."""
    if cfg.model.families > 0:
        return cfg.model
    return dataclasses.replace(cfg.model, families=max(1, round(cfg.tasks / cfg.family_size)))


def similarity_steps(cfg: SimConfig) -> int:
    """Trainer-steps of the experiment per seed (for progress)."""
    return len(FAMILY_METHODS) * cfg.steps


def run_families(
    cfg: SimConfig, seed: int, make_backend: BackendFactory, bar: Progress
) -> dict[str, RunResult]:
    """One seed of the similarity experiment: every method on the seed's family world."""
    world = make_world(family_model(cfg), cfg.tasks, seed)
    out = {}
    for name, method in FAMILY_METHODS.items():
        bar.set_label(f"seed {seed} families: {name}")
        out[name] = run_single(method, world, cfg, seed, make_backend, variant=f"families/{name}")
        bar.update(cfg.steps)
    return out


@dataclass(frozen=True)
class FamilyRow:
    """One method of the similarity experiment (95 % intervals over seeds).

    Attributes:
        method: Method name.
        label: Its description.
        ttb: Steps to reach uniform's final accuracy over uniform's steps.
        vs_bots: Steps to reach uniform's final accuracy over BOTS's (with
            references) on the same seed.
        etr: Mean effective task ratio over all steps.
        final_accuracy: Held-out accuracy after the last step.
    """

    method: str
    label: str
    ttb: Interval
    vs_bots: Interval
    etr: Interval
    final_accuracy: Interval


def summarize_families(exp: Experiment) -> list[FamilyRow]:
    """The experiment's rows, one per method (empty when it did not run)."""
    runs = exp.family_runs
    if not runs:
        return []
    uni = runs["uniform"]
    rows = []
    for name, method in FAMILY_METHODS.items():
        rs = runs[name]
        ttb = [time_to_baseline(r.accuracy, u.accuracy, 1.0) for r, u in zip(rs, uni, strict=True)]
        vs = []
        for r, u, b in zip(rs, uni, runs["bots"], strict=True):
            target = float(np.max(u.accuracy))
            own, ref = steps_to_reach(r.accuracy, target), steps_to_reach(b.accuracy, target)
            vs.append(own / ref if ref > 0 and math.isfinite(ref) else math.nan)
        rows.append(
            FamilyRow(
                name,
                method.label,
                mean_ci(ttb),
                mean_ci(vs),
                mean_ci([float(r.etr.mean()) for r in rs]),
                mean_ci([float(r.accuracy[-1]) for r in rs]),
            )
        )
    return rows


def family_goals(rows: list[FamilyRow]) -> list[tuple[str, str, bool, str]]:
    """(key, claim, held, detail) of the experiment's two goals."""
    if not rows:
        return []
    by = {r.method: r for r in rows}
    sim, both = by["similarity"], by["bots+similarity"]
    return [
        (
            "similarity_ttb",
            f"without references, similarity reaches uniform's final accuracy in <= "
            f"{SIMILARITY_GOAL:g} of uniform's steps",
            sim.ttb.mean <= SIMILARITY_GOAL,
            f"TTB(similarity) = {sim.ttb.mean:.3f} (95 % CI ±{sim.ttb.half_width:.3f}); "
            f"explicit-only {by['explicit_only'].ttb.mean:.3f}, "
            f"references {by['bots'].ttb.mean:.3f}",
        ),
        (
            "both_vs_references",
            "with references, interpolation + similarity is at least as good as references alone",
            both.vs_bots.mean <= BOTH_GOAL,
            f"steps(bots+similarity) / steps(bots) to uniform's final accuracy = "
            f"{both.vs_bots.mean:.3f} (95 % CI ±{both.vs_bots.half_width:.3f}); "
            f"TTB {both.ttb.mean:.3f} against {by['bots'].ttb.mean:.3f}",
        ),
    ]

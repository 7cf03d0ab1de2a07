"""The whole simulation: every method and sweep variant, the trainers and sharing experiments."""

from __future__ import annotations

import time

from bots_core import PoolConfig

from bots_eval._families import run_families, similarity_enabled, similarity_steps
from bots_eval._learner import make_world
from bots_eval._methods import LAMBDA, METHODS, RHO, Method, sweep_method
from bots_eval._progress import Progress
from bots_eval._runner import (
    BASELINE,
    TRAINER_ARMS,
    Experiment,
    SimConfig,
    backend_factory,
    run_single,
    run_trainers,
)
from bots_eval._sharing import run_sharing, sharing_enabled, sharing_steps


def plan_variants(cfg: SimConfig) -> tuple[dict[str, Method], dict[str, list[tuple[float, str]]]]:
    """The variants to run (methods, then sweep points) and each sweep's points."""
    variants: dict[str, Method] = {}
    names = [BASELINE, *[m for m in cfg.methods if m != BASELINE]]
    for name in names:
        variants[name] = METHODS[name]
    base = METHODS["bots"].config
    sweeps: dict[str, list[tuple[float, str]]] = {}
    if "lambda" in cfg.sweeps:
        sweeps["lambda"] = []
        for lam in cfg.lambdas:
            name = f"lambda={lam:g}"
            label = f"BOTS, {LAMBDA}={lam:g}"
            variants[name] = sweep_method(name, label, base.replace(forgetting=lam))
            sweeps["lambda"].append((lam, name))
    if "rho" in cfg.sweeps:
        sweeps["rho"] = []
        for rho in cfg.rhos:
            name = f"rho={rho:g}"
            label = f"BOTS, {RHO}={rho:g}"
            variants[name] = sweep_method(name, label, base.replace(implicit_weight=rho))
            sweeps["rho"].append((rho, name))
    return variants, sweeps


def run_experiment(cfg: SimConfig, *, progress: bool | None = None) -> Experiment:
    """Runs every variant for every seed, then the trainers, sharing and similarity experiments.

    Variants whose pool config equals an earlier one (e.g. ``rho=0.1`` and
    ``bots``) reuse its runs: runs are deterministic given the seed.

    Args:
        cfg: What to simulate.
        progress: Show progress on stderr; None = only on a terminal.

    Returns:
        The results.
    """
    start = time.perf_counter()
    variants, sweeps = plan_variants(cfg)
    exp = Experiment(cfg, variants, {}, sweeps)
    distinct: dict[tuple[PoolConfig, bool], str] = {}
    todo: list[str] = []
    for name, m in variants.items():
        key = (m.config, m.offline)
        if key in distinct:
            continue
        distinct[key] = name
        todo.append(name)
    trainer_methods = list(cfg.trainer_methods) if "trainers" in cfg.sweeps else []
    arms = len(TRAINER_ARMS)
    total = len(todo) * cfg.seeds + arms * len(trainer_methods) * cfg.seeds * cfg.trainers
    sharing = sharing_enabled(cfg)
    extra = sharing_steps(cfg) * cfg.seeds if sharing else 0
    families = similarity_enabled(cfg)
    extra += similarity_steps(cfg) * cfg.seeds if families else 0
    bar = Progress("simulating", total * cfg.steps + extra, enabled=progress)
    with backend_factory(cfg.server) as make_backend:
        for seed in range(cfg.seeds):
            world = make_world(cfg.model, cfg.tasks, seed)
            for name in todo:
                bar.set_label(f"seed {seed} {name}")
                run = run_single(variants[name], world, cfg, seed, make_backend, variant=name)
                exp.runs.setdefault(name, []).append(run)
                bar.update(cfg.steps)
            for mname in trainer_methods:
                for arm in TRAINER_ARMS:
                    bar.set_label(f"seed {seed} {mname} x{cfg.trainers} {arm}")
                    exp.trainer_runs.append(
                        run_trainers(METHODS[mname], world, cfg, seed, arm, make_backend)
                    )
                    bar.update(cfg.steps * cfg.trainers)
            if sharing:
                exp.sharing_runs.extend(run_sharing(world, cfg, seed, make_backend, bar))
            if families:
                for name, run in run_families(cfg, seed, make_backend, bar).items():
                    exp.family_runs.setdefault(name, []).append(run)
    bar.close()
    for name, m in variants.items():
        exp.runs.setdefault(name, exp.runs[distinct[(m.config, m.offline)]])
    exp.wall_seconds = time.perf_counter() - start
    return exp

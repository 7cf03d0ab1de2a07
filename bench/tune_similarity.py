"""How the similarity estimator's settings were chosen: a grid on tuning seeds, apart from the report's.

Runs the similarity experiment's world (`bots simulate --sweep similarity`:
2048 tasks in families of 16, batch 32, 16 rollouts, 200 steps) on seeds
100-119, never on the seeds 0-4 of the table in docs/similarity.md, and prints
TTB(100 %) (steps to uniform's final accuracy over uniform's steps, per seed)
for:

* the estimator's memory (per-step decay of the sums) and the kernel weight
  of a task's own outcomes, on a grid (0.9 and 0 are the estimator before
  issue 13's change: the pool's momentum, neighbours only);
* the task's own outcomes alone (every neighbour at kernel weight 0);
* explicit-only and BOTS with references, for scale.

With ``--worlds`` it then compares the shipped settings with the old ones on
other sizes of the same generator (family size, pool size, batch), seeds
100-109. Run ``python bench/tune_similarity.py [--worlds]`` (about 2 minutes
on 2 cores; ``--seeds`` for fewer).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable

import numpy as np
from bots_core import PoolConfig
from bots_core._neighbours import NeighbourGraph
from bots_core._similarity import MEMORY, SELF_WEIGHT, SimilarityEstimator
from bots_eval._backend import EngineBackend, PoolBackend
from bots_eval._families import FAMILY_METHODS, family_model
from bots_eval._learner import World, make_world
from bots_eval._metrics import Interval, mean_ci, time_to_baseline
from bots_eval._runner import RunResult, SimConfig, run_single

BASE = SimConfig(tasks=2048, batch_size=32, steps=200, methods=("uniform",), sweeps=("similarity",))
FIRST_SEED = 100
MEMORIES = (0.9, 0.95, 0.98, 0.99)
SELF_WEIGHTS = (0.0, 8.0, 32.0, 64.0)
# (family size, tasks, batch size) of --worlds.
WORLDS = ((4, 2048, 32), (64, 2048, 32), (16, 4096, 64), (16, 2048, 8))

MakeEstimator = Callable[[NeighbourGraph], SimilarityEstimator] | None


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def own_outcomes_only(graph: NeighbourGraph) -> NeighbourGraph:
    """The same neighbour lists with every kernel weight 0."""
    far = np.full(graph.neighbours.shape, np.inf, dtype=np.float32)
    return NeighbourGraph.from_neighbours(graph.neighbours, far, graph.bandwidth)


class Runner:
    """Runs methods on the family worlds of one configuration, caching worlds and uniform."""

    def __init__(self, cfg: SimConfig, seeds: range) -> None:
        self.cfg, self.seeds = cfg, seeds
        self.worlds = {s: make_world(family_model(cfg), cfg.tasks, s) for s in seeds}
        self.uniform = {s: self.run("uniform", None, s) for s in seeds}

    def run(self, method: str, make: MakeEstimator, seed: int) -> RunResult:
        def backend(name: str, config: PoolConfig, world: World) -> PoolBackend:
            b = EngineBackend(name, config, world)
            if make is not None and world.graph is not None:
                b.estimator = make(world.graph)
            return b

        return run_single(FAMILY_METHODS[method], self.worlds[seed], self.cfg, seed, backend)

    def ttb(self, method: str, make: MakeEstimator = None) -> Interval:
        values = [
            time_to_baseline(self.run(method, make, s).accuracy, self.uniform[s].accuracy, 1.0)
            for s in self.seeds
        ]
        return mean_ci(values)


def fmt(iv: Interval) -> str:
    """Mean ± half width over the seeds that reached the target; '(k never)' counts the others."""
    never = f" ({iv.censored} never)" if iv.censored else ""
    return f"{iv.mean:.3f} ± {iv.half_width:.3f}{never}"


def grid(seeds: range) -> list[str]:
    r = Runner(BASE, seeds)
    lines = [
        "| memory \\ own-outcome weight | " + " | ".join(f"{w:g}" for w in SELF_WEIGHTS) + " |"
    ]
    lines.append("|---:|" + "---:|" * len(SELF_WEIGHTS))
    for m in MEMORIES:
        cells = []
        for w in SELF_WEIGHTS:
            progress(f"memory {m}, own-outcome weight {w}")
            cells.append(fmt(r.ttb("similarity", lambda g, m=m, w=w: SimilarityEstimator(g, memory=m, self_weight=w))))  # fmt: skip
        lines.append(f"| {m:g} | " + " | ".join(cells) + " |")
    progress("own outcomes only; explicit-only; references")
    own = r.ttb("similarity", lambda g: SimilarityEstimator(own_outcomes_only(g)))
    lines += [
        "",
        f"Own outcomes only (memory {MEMORY:g}, weight {SELF_WEIGHT:g}, neighbours at weight 0): "
        f"{fmt(own)}; explicit-only {fmt(r.ttb('explicit_only'))}; "
        f"BOTS with references {fmt(r.ttb('bots'))}.",
    ]
    return lines


def worlds(seeds: range) -> list[str]:
    lines = [
        "| family size | tasks | batch | explicit-only | similarity before | similarity now |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size, tasks, batch in WORLDS:
        progress(f"world: families of {size}, {tasks} tasks, batch {batch}")
        cfg = dataclasses.replace(BASE, family_size=size, tasks=tasks, batch_size=batch)
        r = Runner(cfg, seeds)
        old = r.ttb("similarity", lambda g: SimilarityEstimator(g, memory=0.9, self_weight=0.0))
        lines.append(
            f"| {size} | {tasks} | {batch} | {fmt(r.ttb('explicit_only'))} | {fmt(old)} | "
            f"{fmt(r.ttb('similarity'))} |"
        )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="tuning seeds from 100 (default 20)")
    p.add_argument("--worlds", action="store_true", help="also compare on other world sizes")
    args = p.parse_args()
    t0 = time.perf_counter()
    seeds = range(FIRST_SEED, FIRST_SEED + args.seeds)
    print(f"TTB(100 %) of similarity, seeds {seeds.start}-{seeds.stop - 1} (mean ± 95 % CI):\n")
    print("\n".join(grid(seeds)))
    if args.worlds:
        few = range(FIRST_SEED, FIRST_SEED + min(args.seeds, 10))
        print(f"\nOther sizes of the families world, seeds {few.start}-{few.stop - 1}:\n")
        print("\n".join(worlds(few)))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Similarity plug-in benchmark: per-step cost against today's update, neighbour search, bytes per task.

Measured in one run, per pool size (B = 256 tasks per step, n = 16, k = 16,
d = 32):

* ``apply_step``: today's update with the default (interpolation) estimator.
* similarity observe: the plug-in's own work per step (O(B k) sums, and
  the similarity terms of the tasks whose sums changed).
* ``apply_step`` on its generic path (the same estimator as another
  object): what any non-default estimator pays today for whole-array decay.
* the full step with the plug-in (``apply_step`` with the plug-in alone: its
  steps fold into ``Lazy.sim``, docs/similarity.md), and the same step on the
  whole-array path (as a ``bots+similarity`` pool, which mixes the two
  estimates anew every step, still takes it).
* the folded step against ``apply_step`` under three conditions: each
  kind back to back (warm caches), taking turns, and each right after a
  selection of its pool (cold caches, as between the steps of training).
* with ``--ann``: the time to build the neighbour graph (exact numpy or faiss
  HNSW) and its recall against an exact search of 500 tasks.

The per-step timings use a synthetic graph (neighbours drawn within families)
so that they do not wait for an ANN build; the step cost does not depend on
which tasks are neighbours. Run ``python bench/bench_similarity.py``
(``--sizes 100000`` for a quick look; ``--ann`` adds the graph builds).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
from bots_core import (
    EstimatorKind,
    Evidence,
    InterpolationEstimator,
    PoolConfig,
    PoolState,
    apply_step,
    select_batch,
)
from bots_core._neighbours import NeighbourGraph, exact_neighbours, knn_graph
from bots_core._similarity import SimilarityEstimator

B = 256
ROLLOUTS = 16
K = 16
D = 32


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def make_state(n: int, estimator: str = "interpolation") -> PoolState:
    rng = np.random.default_rng(0)
    weak = rng.uniform(0.0, 0.6, n)
    strong = np.minimum(1.0, weak + rng.uniform(0.0, 0.4, n))
    state = PoolState("bench", PoolConfig(estimator=EstimatorKind(estimator)))
    state.extend_columns([f"t{i}" for i in range(n)], weak, strong, np.ones(n), np.ones(n))
    state.alpha[:] = rng.uniform(1.0, 20.0, n)
    state.beta[:] = rng.uniform(1.0, 20.0, n)
    return state


class OtherInterpolation(InterpolationEstimator):
    """The default estimator as another object: apply_step takes its generic path."""


def synthetic_graph(n: int, rng: np.random.Generator) -> NeighbourGraph:
    """k neighbours per task drawn from its family of 64 (distances ~ 1)."""
    fam = np.arange(n) // 64
    base = fam * 64
    size = np.minimum(64, n - base)
    nbr = (base[:, None] + rng.integers(0, 2**31, (n, K)) % size[:, None]).astype(np.int32)
    same = nbr == np.arange(n)[:, None]
    nbr[same] = (nbr[same] + 1) % n
    dist = rng.uniform(0.5, 1.5, (n, K)).astype(np.float32)
    return NeighbourGraph.from_neighbours(nbr, dist)


def batches(n: int, count: int) -> list[Evidence]:
    rng = np.random.default_rng(2)
    out = []
    for _ in range(count):
        idx = np.sort(rng.choice(n, B, replace=False)).astype(np.int64)
        s = rng.binomial(ROLLOUTS, 0.5, B).astype(np.float64)
        out.append(Evidence(idx, s, np.full(B, float(ROLLOUTS))))
    return out


def bench_steps(n: int, reps: int) -> dict[str, float]:
    """Median ms per step of each variant; the variants take turns, step by step.

    Taking turns makes the variants compared see the same moments of a
    shared machine; the ratio column is the median of the per-step ratios.
    """
    rng = np.random.default_rng(1)
    progress(f"N={n:,}: pools and a synthetic graph")
    graph = synthetic_graph(n, rng)
    evs = batches(n, 3 * reps + 1)
    default = make_state(n)
    generic = make_state(n)
    other = OtherInterpolation()
    est_state = make_state(n, "similarity")
    est = SimilarityEstimator(graph)

    def plug_in(i: int) -> None:
        est.observe(est_state, evs[i])
        est_state.steps_applied += 1

    full_state = make_state(n, "similarity")
    full = SimilarityEstimator(graph)
    whole_state = make_state(n, "similarity")
    whole = SimilarityEstimator(graph)
    whole.folds = False
    variants: dict[str, Callable[[int], object]] = {
        "apply_step": lambda i: apply_step(default, evs[i]),
        "generic": lambda i: apply_step(generic, evs[i], other),
        "plug_in": plug_in,
        "full": lambda i: apply_step(full_state, evs[i], full),
        "whole": lambda i: apply_step(whole_state, evs[i], whole),
    }
    times = {name: np.empty(reps) for name in variants}
    for step in variants.values():
        step(0)  # warm up
    # The O(batch) variants take turns, then the whole-array ones (which
    # stream the pool through the caches) take theirs.
    for group in (("apply_step", "plug_in", "full"), ("generic", "whole")):
        for i in range(reps):
            for name in group:
                t0 = time.perf_counter()
                variants[name](i + 1)
                times[name][i] = (time.perf_counter() - t0) * 1e3
    out = {name: float(np.median(t)) for name, t in times.items()}
    out["ratio"] = float(np.median(times["full"] / times["apply_step"]))
    # The same two steps under the other conditions a server sees: each kind
    # back to back (warm caches), and each right after a selection of its
    # pool (which streams every task through the caches, as in training).
    alone = {}
    for name in ("apply_step", "full"):
        t = np.empty(reps)
        for i in range(reps):
            t0 = time.perf_counter()
            variants[name](reps + 1 + i)
            t[i] = (time.perf_counter() - t0) * 1e3
        alone[name] = float(np.median(t))
    out["alone_apply_step"], out["alone_full"] = alone["apply_step"], alone["full"]
    cold = {name: np.empty(reps) for name in ("apply_step", "full")}
    for i in range(reps):
        for name, pool in (("apply_step", default), ("full", full_state)):
            select_batch(pool, B, 10_000 + i)
            t0 = time.perf_counter()
            variants[name](2 * reps + 1 + i)
            cold[name][i] = (time.perf_counter() - t0) * 1e3
    out["cold_apply_step"] = float(np.median(cold["apply_step"]))
    out["cold_full"] = float(np.median(cold["full"]))
    out["cold_ratio"] = float(np.median(cold["full"] / cold["apply_step"]))
    return out


def bench_graph(n: int) -> dict[str, float]:
    rng = np.random.default_rng(3)
    fam = max(1, n // 16)
    cent = rng.normal(size=(fam, D)).astype(np.float32)
    x = (cent[rng.integers(0, fam, n)] + 0.5 * rng.normal(size=(n, D))).astype(np.float32)
    progress(f"N={n:,}: neighbour graph")
    t0 = time.perf_counter()
    g = knn_graph(x, K)
    build = time.perf_counter() - t0
    q = rng.choice(n, min(n, 500), replace=False).astype(np.int64)
    truth, _ = exact_neighbours(x, K, rows=q)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(truth, g.neighbours[q], strict=True)]))  # fmt: skip
    return {"build_s": build, "recall": recall}


def bytes_per_task(n: int = 10_000) -> dict[str, float]:
    """State of the plug-in per task in a replica, measured on live objects of ``n`` tasks."""
    g = synthetic_graph(n, np.random.default_rng(4))
    est = SimilarityEstimator(g)
    state = make_state(n, "similarity")
    est.observe(state, batches(n, 1)[0])
    est.estimate(state)
    assert est._conf is not None
    terms = state.sim_terms
    assert terms is not None
    return {
        "embedding (int8 codes, d=32; the graph is built from it)": D,
        f"neighbours (int32) + kernel weights (float32), k={K}": (
            g.neighbours.nbytes + g.weights.nbytes
        )
        / n,
        "reverse lists (int32 holder + float32 weight) + offsets (int64)": (
            g.rev_src.nbytes + g.rev_w.nbytes + g.rev_ptr.nbytes
        )
        / n,
        "running sums s, t + p~ + denominators m + m0 (float64)": (
            est.sum_s.nbytes + est.sum_t.nbytes + est.p.nbytes + est.den.nbytes
        )
        / n,
        "similarity terms qa, qb in the pool (float64)": (terms[0].nbytes + terms[1].nbytes) / n,
        "confidence buffer (float64; only on the whole-array path)": est._conf.nbytes / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--ann", action="store_true", help="also time the neighbour-graph build")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"B = {B}, n = {ROLLOUTS}, k = {K}; medians of {args.reps} steps, the variants "
          "taking turns; ratio: median of the per-step ratios\n")  # fmt: skip
    print("| N tasks | apply_step (interpolation) | similarity observe | "
          "full step with similarity (folded) | ratio | similarity, whole-array path | "
          "interpolation, whole-array path |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for n in sizes:
        r = results[n] = bench_steps(n, args.reps)
        a = r["apply_step"]
        print(f"| {n:,} | {a:.2f} ms | {r['plug_in']:.2f} ms | {r['full']:.2f} ms | "
              f"**{r['ratio']:.2f}x** | {r['whole']:.2f} ms | {r['generic']:.2f} ms |",
              flush=True)  # fmt: skip
    print(
        "\n| N tasks | condition | apply_step (interpolation) | full step with similarity | ratio |"
    )
    print("|---:|---|---:|---:|---:|")
    for n, r in results.items():
        print(
            f"| {n:,} | each kind back to back | {r['alone_apply_step']:.2f} ms | "
            f"{r['alone_full']:.2f} ms | {r['alone_full'] / r['alone_apply_step']:.2f}x |"
        )
        print(
            f"| {n:,} | taking turns (above) | {r['apply_step']:.2f} ms | {r['full']:.2f} ms | "
            f"{r['ratio']:.2f}x |"
        )
        print(f"| {n:,} | each after a selection of its pool | {r['cold_apply_step']:.2f} ms | "
              f"{r['cold_full']:.2f} ms | {r['cold_ratio']:.2f}x |")  # fmt: skip
    if args.ann:
        print("\n| N tasks | graph build (exact <= 10,000, else faiss HNSW) | recall@16 |")
        print("|---:|---:|---:|")
        for n in sizes:
            g = bench_graph(n)
            print(f"| {n:,} | {g['build_s']:.1f} s | {g['recall']:.3f} |", flush=True)
    per = bytes_per_task()
    print("\n| state per task | bytes |\n|---|---:|")
    for what, b in per.items():
        print(f"| {what} | {b:.0f} |")
    print(f"| total in a replica | {sum(per.values()):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

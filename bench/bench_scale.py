"""Scale benchmark: the Thompson kernel against the library calls it replaces, pool growth,
Redis replica cold start and memory, and 10M-task pools.

Run ``python bench/bench_scale.py`` (``--sizes 1000000`` for a quick look;
``--sizes 1000000,10000000`` for the full table). Every figure is compared
with a baseline measured in the same run. Writes ``bench/out/scale.md`` and
``scale.json``.

* select: ``bots_core.select_batch`` (compiled kernel, two threads) against
  (a) the same chunked draw with numpy's ``standard_gamma(dtype=float32)``
  per chunk on the same threads + ``argpartition`` (the code the kernel
  replaced), (b) naive ``rng.beta`` + ``argpartition``, (c) Trinity-RFT's
  ``InterpolationBetaPREstimator.predict_pr(do_sample=True)`` + top-k, the
  steps of its ``DifficultyBasedSelector.get_indices`` (loaded from the
  installed ``trinity-rft`` wheel when present), and (d) the floor: 2N Gamma
  draws by the kernel alone on one thread, by numpy on one thread, and by
  torch's ``_standard_gamma`` (when torch is installed).
* growth: one AddTasks of 10k tasks through the embedded store at 0.2M, 0.4M,
  0.8M tasks (journal record included).
* replica: a fresh process with a ``RedisStore`` serves its first SelectBatch
  of an N-task pool (checkpoint image + task chunks loaded); RSS per task.
* gRPC: ``bots serve`` (embedded store) answers SelectBatch for the same kind
  of pool, imported; its p50 is compared with Trinity-RFT's in-process select
  of the same run. ReportOutcomes p50 and the server's RSS growth per task.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_selector import OUT, B, bench_grpc, make_rates, progress, timings
from bots_core import PoolConfig, PoolState, TaskSpec, _kernel, aggregate, apply_step, select_batch
from bots_core._select import CHUNK, _run_blocks, chunk_seeds, seed_sequence


def big_state(n: int) -> PoolState:
    weak, strong = make_rates(n)
    ones = np.ones(n)
    state = PoolState.from_columns(
        "bench", PoolConfig(), [f"t{i}" for i in range(n)], weak, strong, ones, ones
    )
    rng = np.random.default_rng(1)
    state.alpha = rng.uniform(1.0, 40.0, n)
    state.beta = rng.uniform(1.0, 40.0, n)
    state.capability = 0.4
    return state


def numpy_chunked_select(state: PoolState, number: int) -> np.ndarray:
    """The replaced code path: numpy Gamma draws per chunk on the same threads, top-k per chunk."""
    n = state.task_count
    chunks = (n + CHUNK - 1) // CHUNK
    ss = seed_sequence(state.config.seed, number)
    seeds = chunk_seeds(ss, chunks)
    out: list[np.ndarray] = [np.empty(0, np.int64)] * chunks

    def run(block: range) -> None:
        for ci in block:
            lo, hi = ci * CHUNK, min(n, (ci + 1) * CHUNK)
            rng = np.random.default_rng(seeds[ci])
            shapes = np.concatenate([state.alpha[lo:hi], state.beta[lo:hi]]).astype(np.float32)
            g = rng.standard_gamma(shapes, dtype=np.float32)
            x = g[: hi - lo]
            p = x / (x + g[hi - lo :])
            d = np.abs(p - np.float32(0.5))
            out[ci] = np.argpartition(d, B - 1)[:B] + lo

    _run_blocks(run, chunks)
    return np.concatenate(out)


def naive_select(state: PoolState, rng: np.random.Generator) -> np.ndarray:
    p = rng.beta(state.alpha, state.beta)
    return np.argpartition(np.abs(p - 0.5), B - 1)[:B]


def trinity_estimator() -> type | None:
    """Trinity-RFT's InterpolationBetaPREstimator from the installed wheel, or None."""
    spec = importlib.util.find_spec("trinity")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "buffer/selector"
    file = path / "difficulty_estimator.py"
    if not file.exists():
        return None
    # The module needs only trinity.utils.log.get_logger from the rest of Trinity.
    import logging

    shim = types.ModuleType("trinity.utils.log")
    shim.get_logger = logging.getLogger  # type: ignore[attr-defined]
    sys.modules.setdefault("trinity.utils.log", shim)
    mod_spec = importlib.util.spec_from_file_location("trinity_difficulty_estimator", file)
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.InterpolationBetaPREstimator  # type: ignore[no-any-return]


def trinity_select_fn(state: PoolState) -> Callable[[], object] | None:
    est_cls = trinity_estimator()
    if est_cls is None:
        return None
    est = est_cls(np.stack([state.weak, state.strong], axis=1), 16, 0.1, 0.1)
    est.set(state.alpha, state.beta)
    try:
        import torch
    except ImportError:
        torch = None
    counter = iter(range(10**9))

    def run() -> object:
        # DifficultyBasedSelector.get_indices: scores, then torch.topk (tau = 0).
        rng = np.random.default_rng(next(counter))
        scores = -np.abs(0.5 - est.predict_pr(rng=rng, do_sample=True))
        if torch is not None:
            return torch.topk(torch.from_numpy(scores), B).indices
        return np.argpartition(-scores, B - 1)[:B]

    return run


def torch_gammas_fn(shapes: np.ndarray) -> Callable[[], object] | None:
    """torch's Gamma sampler (``torch._standard_gamma``) over ``shapes``, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(shapes)
    return lambda: torch._standard_gamma(x)


def bench_select(n: int, reps: int) -> dict[str, float]:
    progress(f"select N={n:,}: building the pool")
    state = big_state(n)
    rng = np.random.default_rng(2)
    counter = iter(range(10**9))
    row: dict[str, float] = {}
    progress(f"select N={n:,}: kernel, numpy chunked, naive, Trinity, Gamma floor")
    row["kernel_select"] = float(
        np.median(timings(lambda: select_batch(state, B, next(counter)), reps))
    )
    row["numpy_chunked_select"] = float(
        np.median(timings(lambda: numpy_chunked_select(state, next(counter)), reps))
    )
    row["naive_select"] = float(
        np.median(timings(lambda: naive_select(state, rng), max(3, reps // 3)))
    )
    trinity = trinity_select_fn(state)
    if trinity is not None:
        row["trinity_select"] = float(np.median(timings(trinity, max(3, reps // 3))))
    shapes = np.concatenate([state.alpha, state.beta])
    seed = np.arange(1, 6, dtype=np.uint64)
    # The kernel's sampler on one thread: N Betas are 2N Gammas and N divisions.
    row["kernel_gammas_2n_1thread"] = float(
        np.median(timings(lambda: _kernel.betas(seed, state.alpha, state.beta), max(3, reps // 3)))
    )
    f32 = shapes.astype(np.float32)
    row["numpy_gammas_2n_1thread"] = float(
        np.median(timings(lambda: rng.standard_gamma(f32, dtype=np.float32), max(3, reps // 3)))
    )
    torch_gamma = torch_gammas_fn(shapes)
    if torch_gamma is not None:
        row["torch_gammas_2n"] = float(np.median(timings(torch_gamma, max(3, reps // 3))))
    picked = rng.choice(n, B, replace=False)
    ev = aggregate(state, [(state.keys[i], float(rng.integers(0, 17)), 16.0) for i in picked])
    row["update"] = float(np.median(timings(lambda: apply_step(state, ev), reps)))
    return row


def bench_pool_ops(n: int) -> dict[str, float]:
    """Create (from columns), export and import (validated) of an N-task pool, in process."""
    from bots_server._store import PoolDump

    progress(f"pool ops N={n:,}")
    weak, strong = make_rates(n)
    keys = [f"t{i}" for i in range(n)]
    ones = np.ones(n)
    t0 = time.perf_counter()
    state = PoolState.from_columns("bench", PoolConfig(), keys, weak, strong, ones, ones)
    create = time.perf_counter() - t0
    t0 = time.perf_counter()
    dump = PoolDump.of_state(state, 0)
    export = time.perf_counter() - t0
    t0 = time.perf_counter()
    dump.to_state(10**9)
    imported = time.perf_counter() - t0
    return {"create_s": create, "export_s": export, "import_s": imported}


def bench_growth(sizes: list[int], add: int = 10_000) -> dict[str, float]:
    """Seconds for one AddTasks of ``add`` tasks through the embedded store at each size."""
    from bots_server._embedded import EmbeddedStore

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as data:
        store = EmbeddedStore(data)
        store.create_pool("grow", PoolConfig(), [])
        count = 0
        for target in sizes:
            progress(f"growth: filling to {target:,} tasks, {add:,} per AddTasks")
            times = []
            while count < target:
                specs = [TaskSpec(f"g{i}", 0.2, 0.6) for i in range(count, count + add)]
                t0 = time.perf_counter()
                store.add_tasks("grow", specs)
                times.append(time.perf_counter() - t0)
                count += add
            out[f"add_{add}_at_{target}"] = float(np.median(times[-5:]))
        store.close()
    return out


PROBE = """
import os, sys, time, psutil
sys.path[:0] = {paths!r}
from bots_core._select import warm_up_kernel
from bots_server._memory import return_large_blocks
from bots_server._redis_store import RedisStore
return_large_blocks()  # as `bots serve` does when it starts, before any pool is loaded
warm_up_kernel().join()
proc = psutil.Process()
store = RedisStore({url!r})
rss0 = proc.memory_info().rss
t0 = time.perf_counter()
store.select({name!r}, 256, "", 0, 0.0)
first = time.perf_counter() - t0
t0 = time.perf_counter()
store.select({name!r}, 256, "", 0, 0.0)
second = time.perf_counter() - t0
rss1 = proc.memory_info().rss
print(first, second, rss1 - rss0)
"""


def bench_replica(n: int) -> dict[str, float]:
    """Redis bytes per task, and a fresh replica's first SelectBatch and RSS per task."""
    import redis
    from bench_redis import bytes_per_task, start_redis
    from bots_server._redis_store import RedisStore
    from bots_server._store import PoolDump

    with tempfile.TemporaryDirectory() as tmp:
        rproc, port = start_redis(tmp)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            progress(f"replica N={n:,}: importing into Redis")
            writer = RedisStore(url)
            writer.import_pool(PoolDump.of_state(big_state(n), 0))
            writer.select("bench", B, "", 0, 0.0)
            writer.close()
            per_task, _ = bytes_per_task(port, "bench", n)
            progress(f"replica N={n:,}: cold start of a fresh replica process")
            code = PROBE.format(paths=sys.path[:6], url=url, name="bench")
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout.split()
            first, second, rss = (float(x) for x in out)
            redis.Redis(port=port).flushall()
        finally:
            rproc.terminate()
            rproc.wait(timeout=30)
    return {
        "redis_bytes_per_task": per_task,
        "replica_first_select_s": first,
        "replica_next_select_s": second,
        "replica_rss_per_task": rss / n,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--growth", default="200000,400000,800000")
    ap.add_argument("--replica-sizes", default="1000000")
    ap.add_argument(
        "--grpc-sizes", default="1000000", help="sizes also served by `bots serve` over gRPC"
    )
    args = ap.parse_args()
    result: dict[str, object] = {"machine": f"{os.cpu_count()} CPUs, numpy {np.__version__}"}
    rows = {}
    for n in (int(x) for x in args.sizes.split(",")):
        rows[n] = {**bench_select(n, args.reps), **bench_pool_ops(n)}
    result["select"] = rows
    growth = bench_growth([int(x) for x in args.growth.split(",")]) if args.growth else {}
    result["growth"] = growth
    replicas = {int(n): bench_replica(int(n)) for n in args.replica_sizes.split(",") if n}
    result["replica"] = replicas
    networked = {int(n): bench_grpc(int(n), args.reps) for n in args.grpc_sizes.split(",") if n}
    result["grpc"] = networked

    lines = [
        "| N tasks | select: kernel | numpy chunked (replaced) | naive rng.beta | Trinity-RFT "
        "| kernel vs numpy chunked | 2N Gammas: kernel (N Betas) 1 thread / numpy 1 thread "
        "/ torch | select / kernel's 2N Gammas | update | create / export / import |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows.items():
        trin = f"{r['trinity_select']:.1f} ms" if "trinity_select" in r else "n/a"
        torch_ms = f"{r['torch_gammas_2n']:.1f}" if "torch_gammas_2n" in r else "n/a"
        lines.append(
            f"| {n:,} | {r['kernel_select']:.1f} ms | {r['numpy_chunked_select']:.1f} ms "
            f"| {r['naive_select']:.1f} ms | {trin} "
            f"| {r['numpy_chunked_select'] / r['kernel_select']:.2f}x faster "
            f"| {r['kernel_gammas_2n_1thread']:.1f} / {r['numpy_gammas_2n_1thread']:.1f} "
            f"/ {torch_ms} ms "
            f"| {r['kernel_select'] / r['kernel_gammas_2n_1thread']:.2f}x "
            f"| {r['update']:.1f} ms "
            f"| {r['create_s']:.2f} / {r['export_s']:.2f} / {r['import_s']:.2f} s |"
        )
    if networked:
        lines += [
            "",
            "| N tasks | SelectBatch over gRPC p50 / p99 (embedded store) | Trinity-RFT in process "
            "| gRPC p50 / Trinity | ReportOutcomes p50 | server RSS/task |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for n, g in networked.items():
            trin_ms = rows.get(n, {}).get("trinity_select")
            ratio = f"{g['grpc_select_p50'] / trin_ms:.2f}x" if trin_ms else "n/a"
            lines.append(
                f"| {n:,} | {g['grpc_select_p50']:.1f} / {g['grpc_select_p99']:.1f} ms "
                f"| {f'{trin_ms:.1f} ms' if trin_ms else 'n/a'} | {ratio} "
                f"| {g['grpc_report_p50']:.1f} ms | {g['server_rss_per_task']:.0f} B |"
            )
    if growth:
        lines += [
            "",
            "| AddTasks of 10k tasks at | seconds (median of the last 5) |",
            "|---:|---:|",
        ]
        lines += [f"| {k.split('_at_')[1]} tasks | {v * 1e3:.1f} ms |" for k, v in growth.items()]
    if replicas:
        lines += [
            "",
            "| N tasks | replica first SelectBatch (cold) | next | replica RSS/task | Redis B/task |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n, r in replicas.items():
            lines.append(
                f"| {n:,} | {r['replica_first_select_s']:.2f} s "
                f"| {r['replica_next_select_s'] * 1e3:.1f} ms | {r['replica_rss_per_task']:.0f} B "
                f"| {r['redis_bytes_per_task']:.1f} B |"
            )
    md = "\n".join(lines)
    print(md)
    OUT.mkdir(exist_ok=True)
    (OUT / "scale.md").write_text(md + "\n")
    (OUT / "scale.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

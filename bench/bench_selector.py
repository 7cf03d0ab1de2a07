"""Selector benchmark: engine select/update in process, and SelectBatch/ReportOutcomes over gRPC.

Baseline, measured in the same run: a naive numpy step — ``rng.beta`` over all
tasks + ``argpartition`` for selection, and the textbook full-array Eq. 1
update. Run ``python bench/bench_selector.py`` (``--sizes 10000,100000`` for a
quick look). Prints a markdown table and writes ``bench/out/selector.md``,
``selector.json`` and ``selector.png`` (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_core import PoolConfig, PoolState, TaskSpec, aggregate, apply_step, select_batch

B = 256
ROLLOUTS = 16
OUT = Path(__file__).resolve().parent / "out"


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timings(fn: Callable[[], object], reps: int) -> np.ndarray:
    fn()  # warm up
    out = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def make_rates(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weak = rng.uniform(0.0, 0.6, n)
    return weak, np.minimum(1.0, weak + rng.uniform(0.0, 0.4, n))


def make_state(n: int) -> PoolState:
    weak, strong = make_rates(n)
    state = PoolState("bench", PoolConfig())
    state.add_tasks([TaskSpec(f"t{i}", float(weak[i]), float(strong[i])) for i in range(n)])
    # Spread the posteriors as a pool in mid-training would have them.
    rng = np.random.default_rng(1)
    state.alpha[:] = rng.uniform(1.0, 40.0, n)
    state.beta[:] = rng.uniform(1.0, 40.0, n)
    state.capability = 0.4
    return state


def naive_select(alpha: np.ndarray, beta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = rng.beta(alpha, beta)
    return np.argpartition(np.abs(p - 0.5), B - 1)[:B]


def naive_update(state: PoolState, idx: np.ndarray, s: np.ndarray, t: np.ndarray) -> None:
    lam, rho, n = 0.1, 0.1, 16.0
    has = ~np.isnan(state.weak)
    p = np.clip(np.where(has, state.weak + 0.4 * (state.strong - state.weak), 0.0), 0, 1)
    sel = np.zeros(len(state.alpha), bool)
    sel[idx] = True
    st = np.zeros(len(state.alpha))
    ft = np.zeros(len(state.alpha))
    st[idx], ft[idx] = s, t - s
    imp = np.where(sel | ~has, 0.0, rho * n)
    state.alpha = (1 - lam) * state.alpha + lam * state.alpha0 + st + imp * p
    state.beta = (1 - lam) * state.beta + lam * state.beta0 + ft + imp * (1 - p)


def bench_engine(n: int, reps: int) -> dict[str, float]:
    progress(f"engine N={n:,}: building pool")
    state = make_state(n)
    rng = np.random.default_rng(2)
    counter = iter(range(10**9))
    sel = timings(lambda: select_batch(state, B, next(counter)), reps)
    base_sel = timings(lambda: naive_select(state.alpha, state.beta, rng), reps)
    picked = rng.choice(n, B, replace=False)
    ev = aggregate(state, [(state.keys[i], float(rng.integers(0, 17)), 16.0) for i in picked])
    upd = timings(lambda: apply_step(state, ev), reps)
    base_upd = timings(lambda: naive_update(state, ev.indices, ev.successes, ev.trials), reps)
    return {
        "select_p50": float(np.median(sel)),
        "naive_select_p50": float(np.median(base_sel)),
        "update_p50": float(np.median(upd)),
        "naive_update_p50": float(np.median(base_upd)),
    }


def bench_store(n: int, reps: int) -> dict[str, float]:
    """The same SelectBatch in process: the embedded store (journal fsync included), no gRPC."""
    from bots_server._embedded import EmbeddedStore
    from bots_server._store import PoolDump

    progress(f"in-process store N={n:,}: importing the benchmark pool")
    with tempfile.TemporaryDirectory() as data:
        store = EmbeddedStore(data)
        store.import_pool(PoolDump.of_state(make_state(n), 0))
        t = timings(lambda: store.select("bench", B, "", 0, 0.0), reps)
        store.close()
    return {"store_select_p50": float(np.median(t))}


def import_chunks(
    state: PoolState, size: int = 50_000, name: str = "bench"
) -> Iterator[pb.PosteriorChunk]:
    """ImportPosteriors messages for an engine state, as pool ``name``."""
    for lo in range(0, state.task_count, size):
        chunk = pb.PosteriorChunk()
        if lo == 0:
            chunk.header.name = name
            chunk.header.task_count = state.task_count
            chunk.header.capability = state.capability
        add = chunk.tasks.add
        for i in range(lo, min(state.task_count, lo + size)):
            add(
                task=pb.Task(key=state.keys[i], weak=state.weak[i], strong=state.strong[i]),
                alpha=state.alpha[i],
                beta=state.beta[i],
            )
        yield chunk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_rss(proc: subprocess.Popen[bytes]) -> int:
    """Resident set of a server process, in bytes."""
    import psutil

    return int(psutil.Process(proc.pid).memory_info().rss)


def bench_grpc(n: int, reps: int) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        cmd = [
            sys.executable,
            "-m",
            "bots_server",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            data,
            "--log-level",
            "WARNING",
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        try:
            opts = [("grpc.max_send_message_length", 64 << 20)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                grpc.channel_ready_future(ch).result(timeout=30)
                stub = selector_pb2_grpc.TaskSelectorStub(ch)
                # The same pool (posteriors included) as the engine benchmark, via import.
                rss0 = server_rss(proc)
                progress(f"gRPC N={n:,}: importing the benchmark pool")
                stub.ImportPosteriors(import_chunks(make_state(n)), timeout=600)
                progress(f"gRPC N={n:,}: SelectBatch x{reps}")
                req = pb.SelectBatchRequest(pool="bench", batch_size=B)
                sel = timings(lambda: stub.SelectBatch(req, timeout=30), reps)
                rng = np.random.default_rng(3)

                def report() -> None:
                    picked = rng.choice(n, B, replace=False)
                    stub.ReportOutcomes(
                        pb.ReportOutcomesRequest(
                            pool="bench",
                            request_id=uuid.uuid4().hex,
                            outcomes=[
                                pb.Outcome(
                                    task_key=f"t{i}",
                                    successes=float(rng.integers(0, 17)),
                                    trials=ROLLOUTS,
                                )
                                for i in picked
                            ],
                        ),
                        timeout=30,
                    )

                progress(f"gRPC N={n:,}: ReportOutcomes x{reps}")
                rep = timings(report, reps)
                rss_per_task = (server_rss(proc) - rss0) / n
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "grpc_select_p50": float(np.median(sel)),
        "grpc_select_p99": float(np.percentile(sel, 99)),
        "grpc_report_p50": float(np.median(rep)),
        "grpc_report_p99": float(np.percentile(rep, 99)),
        "server_rss_per_task": rss_per_task,
    }


def table(rows: dict[int, dict[str, float]]) -> str:
    lines = [
        "| N tasks | select (engine) | naive select | speed-up | update (engine) | naive update "
        "| select via store, in process | SelectBatch over gRPC p50 / p99 "
        "| gRPC over store | gRPC over engine | ReportOutcomes p50 / p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows.items():
        lines.append(
            f"| {n:,} | {r['select_p50']:.2f} ms | {r['naive_select_p50']:.2f} ms "
            f"| {r['naive_select_p50'] / r['select_p50']:.2f}x | {r['update_p50']:.2f} ms "
            f"| {r['naive_update_p50']:.2f} ms | {r['store_select_p50']:.2f} ms "
            f"| {r['grpc_select_p50']:.2f} / {r['grpc_select_p99']:.2f} ms "
            f"| {r['grpc_select_p50'] - r['store_select_p50']:+.2f} ms "
            f"| {r['grpc_select_p50'] - r['select_p50']:+.2f} ms "
            f"| {r['grpc_report_p50']:.2f} / {r['grpc_report_p99']:.2f} ms |"
        )
    return "\n".join(lines)


def plot(rows: dict[int, dict[str, float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ns = list(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in [
        ("naive_select_p50", "naive select"),
        ("select_p50", "engine select"),
        ("grpc_select_p50", "SelectBatch (gRPC)"),
        ("update_p50", "engine update"),
        ("grpc_report_p50", "ReportOutcomes (gRPC)"),
    ]:
        ax.plot(ns, [rows[n][key] for n in ns], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks in pool")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"bots-selector, B={B}, n={ROLLOUTS}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    rows: dict[int, dict[str, float]] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        rows[n] = {
            **bench_engine(n, args.reps),
            **bench_store(n, args.reps),
            **bench_grpc(n, args.reps),
        }
    md = table(rows)
    print(md)
    OUT.mkdir(exist_ok=True)
    machine = f"{os.cpu_count()} CPUs, numpy {np.__version__}, grpcio {grpc.__version__}"
    (OUT / "selector.md").write_text(f"{md}\n\nMachine: {machine}\n")
    (OUT / "selector.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    if plot(rows, OUT / "selector.png"):
        progress(f"wrote {OUT / 'selector.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Redis-store benchmark: SelectBatch latency per store, report throughput, Redis bytes per task.

Run ``python bench/bench_redis.py`` (``--sizes 100000`` for a quick look). In
one run it measures SelectBatch p50/p99 against the embedded store, against
Redis with one replica and with two replicas (calls alternate), the aggregate
ReportOutcomes rate of 8 concurrent client processes (reports of 256 tasks x
16 rollouts, each a BOTS step), Redis ``MEMORY USAGE`` per task of a pool,
and how much the embedded server's and a replica's resident sets grew per
task. Each pool is imported (ImportPosteriors) with posteriors spread as in
mid-training, the pool of ``bench_selector.py``. Writes ``bench/out/redis.md``
and ``redis.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import numpy as np
import redis
from bench_selector import (
    OUT,
    ROLLOUTS,
    B,
    free_port,
    import_chunks,
    make_state,
    progress,
    server_rss,
    timings,
)
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_core import PoolState
from bots_server import _redis_keys as rk


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            tmp,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        stdout=subprocess.DEVNULL,
    )
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, port


def start_replica(data: str, redis_url: str = "") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
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
    if redis_url:
        cmd += ["--redis-url", redis_url]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    with grpc.insecure_channel(addr) as ch:
        grpc.channel_ready_future(ch).result(timeout=60)
    return proc, addr


def stub(addr: str) -> selector_pb2_grpc.TaskSelectorStub:
    ch = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)])
    return selector_pb2_grpc.TaskSelectorStub(ch)


def fill_pool(addr: str, name: str, state: PoolState) -> None:
    """Imports ``state`` (``make_state``: posteriors spread as in mid-training) as pool ``name``."""
    progress(f"  {name}: importing {state.task_count:,} tasks")
    stub(addr).ImportPosteriors(import_chunks(state, name=name), timeout=1200)


def select_latency(addrs: list[str], name: str, reps: int) -> np.ndarray:
    stubs = [stub(a) for a in addrs]
    req = pb.SelectBatchRequest(pool=name, batch_size=B)
    for s in stubs:  # every replica loads the pool once before the clock starts
        s.SelectBatch(req, timeout=120)
    calls = iter(range(10**9))
    return timings(lambda: stubs[next(calls) % len(stubs)].SelectBatch(req, timeout=60), reps)


def _report_worker(addr: str, name: str, n: int, seconds: float, seed: int, out: mp.Queue) -> None:
    s = stub(addr)
    rng = np.random.default_rng(seed)
    done = 0
    # Requests are built before the clock starts: the clients' own cost is not measured.
    requests = []
    for _ in range(64):
        picked = rng.choice(n, B, replace=False)
        wins = rng.integers(0, ROLLOUTS + 1, B).astype(float)
        requests.append(
            [
                pb.Outcome(task_key=f"t{i}", successes=w, trials=ROLLOUTS)
                for i, w in zip(picked, wins)
            ]
        )
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.ReportOutcomes(
            pb.ReportOutcomesRequest(
                pool=name, request_id=uuid.uuid4().hex, outcomes=requests[done % 64]
            ),
            timeout=30,
        )
        done += 1
    out.put(done)


def report_throughput(addrs: list[str], name: str, n: int, clients: int, seconds: float) -> float:
    q: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=_report_worker, args=(addrs[i % len(addrs)], name, n, seconds, i, q))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def bytes_per_task(port: int, name: str, n: int) -> tuple[float, dict[str, int]]:
    r = redis.Redis(port=port)
    inc = r.hget(rk.meta(name), "incarnation").decode()
    keys = rk.PoolKeys(name, inc)
    names = [keys.meta, keys.ckpt, keys.log, *keys.chunks(n)]
    usage = {k: int(r.memory_usage(k, samples=0) or 0) for k in names}
    return sum(usage.values()) / n, usage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--report-seconds", type=float, default=10.0)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rproc, rport = start_redis(tmp)
        url = f"redis://127.0.0.1:{rport}/0"
        emb, emb_addr = start_replica(f"{tmp}/embedded")
        r1, a1 = start_replica(f"{tmp}/r1", url)
        r2, a2 = start_replica(f"{tmp}/r2", url)
        try:
            for n in (int(x) for x in args.sizes.split(",")):
                progress(f"N={n:,}: filling the embedded and the Redis pool")
                name = f"bench-{n}"
                rss0 = {p: server_rss(p) for p in (emb, r1)}
                state = make_state(n)
                fill_pool(emb_addr, name, state)
                fill_pool(a1, name, state)
                del state
                progress(f"N={n:,}: SelectBatch x{args.reps} per configuration")
                emb_t = select_latency([emb_addr], name, args.reps)
                one_t = select_latency([a1], name, args.reps)
                two_t = select_latency([a1, a2], name, args.reps)
                # Force a checkpoint so that memory is measured in the steady state.
                progress(f"N={n:,}: ReportOutcomes, 8 clients x {args.report_seconds:.0f}s")
                rate = report_throughput([a1, a2], name, n, 8, args.report_seconds)
                stub(a1).GetPool(pb.GetPoolRequest(pool=name), timeout=300)
                per_task, usage = bytes_per_task(rport, name, n)
                grown = {p: (server_rss(p) - rss0[p]) / n for p in (emb, r1)}
                rows[n] = {
                    "embedded_p50": float(np.median(emb_t)),
                    "embedded_p99": float(np.percentile(emb_t, 99)),
                    "redis1_p50": float(np.median(one_t)),
                    "redis1_p99": float(np.percentile(one_t, 99)),
                    "redis2_p50": float(np.median(two_t)),
                    "redis2_p99": float(np.percentile(two_t, 99)),
                    "reports_per_s": rate,
                    "bytes_per_task": per_task,
                    "embedded_rss_per_task": grown[emb],
                    "replica_rss_per_task": grown[r1],
                    "memory_usage": usage,
                }
        finally:
            for p in (emb, r1, r2):
                p.terminate()
                p.wait(timeout=30)
            rproc.terminate()
            rproc.wait(timeout=30)
    lines = [
        "| N tasks | SelectBatch embedded p50 / p99 | Redis, 1 replica p50 / p99 | Redis, 2 replicas "
        "p50 / p99 | Redis / embedded (p50) | ReportOutcomes/s (8 clients) | Redis bytes/task "
        "| server RSS/task, embedded / replica |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows.items():
        lines.append(
            f"| {n:,} | {r['embedded_p50']:.1f} / {r['embedded_p99']:.1f} ms "
            f"| {r['redis1_p50']:.1f} / {r['redis1_p99']:.1f} ms "
            f"| {r['redis2_p50']:.1f} / {r['redis2_p99']:.1f} ms "
            f"| {r['redis1_p50'] / r['embedded_p50']:.2f}x | {r['reports_per_s']:.0f} "
            f"| {r['bytes_per_task']:.1f} "
            f"| {r['embedded_rss_per_task']:.0f} / {r['replica_rss_per_task']:.0f} B |"
        )
    md = "\n".join(lines)
    print(md)
    OUT.mkdir(exist_ok=True)
    (OUT / "redis.md").write_text(md + "\n")
    (OUT / "redis.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Many pools on one replica: memory and SelectBatch latency with concurrent clients.

Run ``python bench/bench_pools.py`` (defaults: 200 pools of 50,000 tasks, 16
clients; ``--pools 20 --tasks 5000`` for a quick look). One ``bots serve``
process (embedded store, or a Redis replica with ``--store redis``) holds
every pool. 16 client processes then run a training loop each, a
SelectBatch (B = 256) and a ReportOutcomes of what it drew, on a pool picked
at random per step; the baseline, in the same run and the same server, is
the same clients all on one pool. Prints a table of SelectBatch p50 / p99
and the server's RSS per task, and writes ``bench/out/pools.md`` and
``pools.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
import uuid

import numpy as np
from bench_redis import start_redis, start_replica, stub
from bench_selector import OUT, ROLLOUTS, B, make_rates, progress
from bots_api.v1 import selector_pb2 as pb


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def fill(addr: str, pools: int, tasks: int) -> None:
    s = stub(addr)
    weak, strong = make_rates(tasks)
    specs = [pb.Task(key=f"t{i}", weak=weak[i], strong=strong[i]) for i in range(tasks)]
    t0 = time.monotonic()
    for p in range(pools):
        s.CreatePool(pb.CreatePoolRequest(name=f"pool-{p}", tasks=specs), timeout=300)
        if p % 10 == 9 or p == pools - 1:
            rate = (p + 1) / (time.monotonic() - t0)
            progress(f"  created {p + 1}/{pools} pools ({rate:.1f} pools/s)")


def _client(addr: str, names: list[str], seconds: float, seed: int, out: mp.Queue) -> None:
    s = stub(addr)
    rng = np.random.default_rng(seed)
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = names[int(rng.integers(len(names)))]
        t0 = time.perf_counter()
        reply = s.SelectBatch(pb.SelectBatchRequest(pool=name, batch_size=B), timeout=60)
        lat.append(time.perf_counter() - t0)
        wins = rng.integers(0, ROLLOUTS + 1, len(reply.tasks))
        s.ReportOutcomes(
            pb.ReportOutcomesRequest(
                pool=name,
                request_id=uuid.uuid4().hex,
                selection_id=reply.selection_id,
                outcomes=[
                    pb.Outcome(task_key=t.key, successes=float(w), trials=ROLLOUTS)
                    for t, w in zip(reply.tasks, wins)
                ],
            ),
            timeout=60,
        )
    out.put(lat)


def run_clients(addr: str, names: list[str], clients: int, seconds: float) -> np.ndarray:
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(addr, names, seconds, i, q)) for i in range(clients)]
    for p in procs:
        p.start()
    lat = [x for _ in procs for x in q.get(timeout=seconds + 300)]
    for p in procs:
        p.join()
    return np.array(lat) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--store", choices=("embedded", "redis"), default="embedded")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rproc = None
        url = ""
        if args.store == "redis":
            rproc, rport = start_redis(tmp)
            url = f"redis://127.0.0.1:{rport}/0"
        server, addr = start_replica(f"{tmp}/data", url)
        try:
            idle = rss_bytes(server.pid)
            progress(f"{args.pools} pools x {args.tasks:,} tasks ({args.store} store)")
            fill(addr, args.pools, args.tasks)
            names = [f"pool-{p}" for p in range(args.pools)]
            progress(f"baseline: {args.clients} clients on one pool, {args.seconds:.0f} s")
            one = run_clients(addr, names[:1], args.clients, args.seconds)
            progress(f"{args.clients} clients spread over {args.pools} pools, {args.seconds:.0f} s")
            many = run_clients(addr, names, args.clients, args.seconds)
            rss = rss_bytes(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
            if rproc is not None:
                rproc.terminate()
                rproc.wait(timeout=30)
    total = args.pools * args.tasks
    row = {
        "pools": args.pools,
        "tasks_per_pool": args.tasks,
        "store": args.store,
        "clients": args.clients,
        "one_pool_p50": float(np.median(one)),
        "one_pool_p99": float(np.percentile(one, 99)),
        "one_pool_selects": len(one),
        "many_pools_p50": float(np.median(many)),
        "many_pools_p99": float(np.percentile(many, 99)),
        "many_pools_selects": len(many),
        "rss_bytes": rss,
        "rss_per_task": (rss - idle) / total,
    }
    md = "\n".join(
        [
            "| pools x tasks | store | clients | SelectBatch p50 / p99, one pool (baseline) "
            "| SelectBatch p50 / p99, all pools | p99 all / one | server RSS | RSS per task |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            f"| {args.pools} x {args.tasks:,} | {args.store} | {args.clients} "
            f"| {row['one_pool_p50']:.1f} / {row['one_pool_p99']:.1f} ms "
            f"| {row['many_pools_p50']:.1f} / {row['many_pools_p99']:.1f} ms "
            f"| {row['many_pools_p99'] / row['one_pool_p99']:.2f}x "
            f"| {rss / 2**30:.2f} GiB | {row['rss_per_task']:.0f} B |",
        ]
    )
    print(md)
    OUT.mkdir(exist_ok=True)
    (OUT / "pools.md").write_text(md + "\n")
    (OUT / "pools.json").write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bytes per task that task embeddings and the similarity estimator add, in Redis and in a replica.

Run ``python bench/bench_embed_memory.py`` (default 100,000 tasks; ``--tasks``
to change). Two pools of the same tasks go into one redis-server: one without
embeddings (preset ``bots``, no references) and one with 32-dimensional
embeddings (preset ``similarity``). Each takes one step and is checkpointed,
so Redis holds what a running pool holds: task chunks (with the int8 codes),
the checkpoint image (with the estimator's sums) and the log. Then a fresh
replica process loads each pool and applies a step (which builds the
neighbour graph), and its RSS growth is measured (faiss is imported before:
its library is a cost per process, not per task). Prints one table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

import numpy as np
from bench_redis import bytes_per_task, start_redis
from bench_selector import progress
from bots_core import PoolConfig, TaskSpec, preset

PROBE = """
import sys, psutil
sys.path[:0] = {paths!r}
from bots_core._select import warm_up_kernel
from bots_server._memory import release_free_memory, return_large_blocks
from bots_server._model import OutcomeIn
from bots_server._redis_store import RedisStore
return_large_blocks()  # as `bots serve` does when it starts
warm_up_kernel().join()
try:
    import faiss  # its library's pages are a cost per process, not per task
except ImportError:
    pass
proc = psutil.Process()
store = RedisStore({url!r}, checkpoint_every=10**9)
rss0 = proc.memory_info().rss
sel = store.select({name!r}, 256, "", 0, 0.0)
outs = [OutcomeIn(k, 1.0, 2.0) for k in sel.keys]
store.report({name!r}, "probe", sel.selection_id, outs, True)
store.get_pool({name!r})  # applies the step: the graph is built here
release_free_memory()
print(proc.memory_info().rss - rss0)
"""


def fill(url: str, name: str, config: PoolConfig, n: int, embeddings: np.ndarray | None) -> None:
    from bots_server._model import OutcomeIn
    from bots_server._redis_store import RedisStore

    store = RedisStore(url, checkpoint_every=1)
    specs = [TaskSpec(f"t{i}") for i in range(n)]
    store.create_pool(name, config, specs, embeddings)
    sel = store.select(name, 256, "", 0, 0.0)
    store.report(name, "one", sel.selection_id, [OutcomeIn(k, 1.0, 2.0) for k in sel.keys], True)
    store.get_pool(name)  # applies the step and writes the checkpoint
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    args = ap.parse_args()
    n = args.tasks
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n // 16 + 1, 32))
    emb = (centres[np.arange(n) // 16] + 0.5 * rng.normal(size=(n, 32))).astype(np.float32)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rproc, port = start_redis(tmp)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            for name, config, e in (("plain", preset("bots"), None),
                                    ("similarity", preset("similarity"), emb)):  # fmt: skip
                progress(f"{name}: {n:,} tasks into Redis")
                fill(url, name, config, n, e)
                redis_b, _ = bytes_per_task(port, name, n)
                progress(f"{name}: a fresh replica loads it and applies a step")
                code = PROBE.format(paths=sys.path[:6], url=url, name=name)
                out = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True
                ).stdout.split()
                rows[name] = (redis_b, float(out[-1]) / n)
        finally:
            rproc.terminate()
            rproc.wait(timeout=30)
    print(f"| pool ({n:,} tasks) | Redis B/task | replica RSS growth B/task |")
    print("|---|---:|---:|")
    for name, (r, rss) in rows.items():
        print(f"| {name} | {r:.1f} | {rss:.0f} |")
    (r0, s0), (r1, s1) = rows["plain"], rows["similarity"]
    print(f"| similarity - plain | {r1 - r0:.1f} | {s1 - s0:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

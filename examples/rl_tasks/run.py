"""BOTS vs uniform, MoPPS-like, DOTS-like and DAPO-style filtering in a real (tiny) GRPO run on CPU.

    python examples/rl_tasks/run.py --out rl_tasks_out          # the full comparison
    python examples/rl_tasks/run.py --quick --out /tmp/q        # a smoke run (one seed, few steps)
    python examples/rl_tasks/run.py --similarity --out rl_sim   # implicit evidence without references

1. A 2-layer Qwen2 is warmed up by supervised training on six task families.
   The checkpoint at ``base_step`` is the base policy; an earlier one
   (``weak_step``) and a much longer one (``strong_step``) of the same
   supervised run are the weak and strong references. Their pass rates on
   every pool task are measured by sampling (``ref_samples`` each).
2. A selector server starts in process on a free port (embedded store in a
   temp dir). Each (method, seed) gets its own pool and trains the base
   policy with GRPO; every batch is a `SelectBatch` of that pool and every
   rollout's reward goes back in `ReportOutcomes`.
3. Held-out sampled pass@1 and greedy accuracy are measured every
   ``eval_every`` steps; report.py writes the table, the figure and the JSON.

Methods whose preset uses the similarity estimator (``similarity``,
``bots+similarity``) send every task with an embedding of its prompt, made as
``bots embed`` makes it (``embedder``, reduced to ``embed_dim`` by PCA over
the pool); ``--similarity`` runs those against uniform, explicit-only and
BOTS with references (docs/similarity.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the experiment."""

    methods: tuple[str, ...] = (
        "uniform",
        "bots",
        "explicit_only",
        "implicit_only",
        "dapo",
        "bots-p0.25",
    )
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pool_per_group: int = 80
    held_per_group: int = 20
    weak_step: int = 300
    base_step: int = 400
    strong_step: int = 1600
    ref_samples: int = 16
    batch_size: int = 16
    rollouts: int = 8
    steps: int = 160
    eval_every: int = 10
    eval_samples: int = 3
    lr: float = 1e-4
    dapo_max_rounds: int = 4
    workers: int = 2
    trl_steps: int = 40
    embedder: str = "minilm"
    embed_dim: int = 32


# --similarity: implicit evidence without reference models against the methods
# around it (docs/similarity.md).
SIMILARITY_METHODS = ("uniform", "explicit_only", "similarity", "bots", "bots+similarity")
# Presets whose pools need task embeddings.
EMBEDDING_PRESETS = ("similarity", "bots+similarity")

QUICK = Config(
    methods=("uniform", "bots", "dapo"),
    seeds=(0,),
    pool_per_group=6,
    held_per_group=3,
    weak_step=10,
    base_step=30,
    strong_step=60,
    ref_samples=4,
    batch_size=8,
    rollouts=4,
    steps=6,
    eval_every=3,
    eval_samples=2,
    workers=1,
    trl_steps=2,
    embedder="hashing",
)


def parse_method(method: str) -> tuple[str, float | None]:
    """``"bots"`` -> (preset, None); ``"bots-p0.25"`` -> ("bots", target 0.25); ``"dapo"`` -> ("uniform", None)."""
    if method == "dapo":
        return "uniform", None
    preset, _, target = method.partition("-p")
    return preset, float(target) if target else None


def needs_embeddings(method: str) -> bool:
    """Whether the method's pool uses the similarity estimator (its tasks carry embeddings)."""
    return parse_method(method)[0] in EMBEDDING_PRESETS


def embed_prompts(cfg: Config, prompts: list[str], log: Any) -> np.ndarray:
    """Embeddings of the prompts as ``bots embed --model cfg.embedder --dim cfg.embed_dim`` makes them."""
    from bots_server._embed import load_embedder, reduce

    t0 = time.monotonic()
    vectors = load_embedder(cfg.embedder)(prompts)
    low = reduce(np.asarray(vectors, dtype=np.float32), cfg.embed_dim)
    log(f"embedded {len(prompts)} prompts ({cfg.embedder}, d = {low.shape[1]}) in "
        f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    return low


def prepare(cfg: Config, workdir: Path, log: Any, cache: Path | None = None) -> dict[str, Any]:
    """Supervised warm-up, the pool, the held-out set, the measured reference pass rates.

    With ``cache``, a preparation saved there by an earlier run with the same
    settings is reused (the base weights and the measured rates). Prompt
    embeddings are added when a method needs them.
    """
    prep = _prepare(cfg, workdir, log, cache)
    if any(needs_embeddings(m) for m in cfg.methods):
        prep["embeddings"] = embed_prompts(cfg, [p.prompt for p in prep["pool"]], log)
    return prep


def _prepare(cfg: Config, workdir: Path, log: Any, cache: Path | None) -> dict[str, Any]:
    """The warm-up, the pool and held-out problems and the measured rates (see :func:`prepare`)."""
    import policy
    import torch
    import world

    pool = world.make_problems(cfg.pool_per_group, seed=1, prefix="t")
    held = world.make_problems(
        cfg.held_per_group, seed=2, prefix="h", exclude={p.prompt for p in pool}
    )
    fields = (
        "pool_per_group",
        "held_per_group",
        "weak_step",
        "base_step",
        "strong_step",
        "ref_samples",
    )
    tag = {f: getattr(cfg, f) for f in fields}
    if cache is not None and cache.exists():
        saved_prep = torch.load(cache, weights_only=False)
        if saved_prep["tag"] == tag:
            torch.save(saved_prep["base"], workdir / "base.pt")
            log(f"preparation loaded from {cache}")
            return {"pool": pool, "held": held, "rates": saved_prep["rates"]}
    model = policy.build_model(seed=0)
    saved = policy.sft(model, cfg.strong_step, seed=0, checkpoints=(cfg.weak_step, cfg.base_step))
    saved[cfg.strong_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    enc = policy.Encoded(pool)
    rates: dict[str, np.ndarray] = {}
    for name, step, seed in (
        ("weak", cfg.weak_step, 3),
        ("base", cfg.base_step, 4),
        ("strong", cfg.strong_step, 5),
    ):
        model.load_state_dict(saved[step])
        rates[name] = policy.pass_rates(model, enc, cfg.ref_samples, seed=seed)
    model.load_state_dict(saved[cfg.base_step])
    torch.save(saved[cfg.base_step], workdir / "base.pt")
    if cache is not None:
        torch.save({"tag": tag, "base": saved[cfg.base_step], "rates": rates}, cache)
    w, b, g = rates["weak"], rates["base"], rates["strong"]
    log(
        f"pool {len(pool)} tasks in {len(world.GROUPS)} groups, held-out {len(held)}; "
        f"mean pass rate weak {w.mean():.2f} / base {b.mean():.2f} / strong {g.mean():.2f}; "
        f"base tasks at 0: {(b == 0).mean():.0%}, at 1: {(b == 1).mean():.0%}; "
        f"weak = strong = 0: {((w == 0) & (g == 0)).mean():.0%}"
    )
    return {"pool": pool, "held": held, "rates": rates}


def _pool_tasks(prep: dict[str, Any], embeddings: bool = False) -> list[Any]:
    from bots_client import Task

    w, g = prep["rates"]["weak"], prep["rates"]["strong"]
    tasks = [Task(p.key, weak=float(wk), strong=float(st)) for p, wk, st in zip(prep["pool"], w, g)]
    if not embeddings:
        return tasks
    vecs = prep["embeddings"]
    return [dataclasses.replace(t, embedding=tuple(map(float, v))) for t, v in zip(tasks, vecs)]


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One GRPO run selecting through the service; runs in a worker process."""
    warnings.filterwarnings("ignore")
    import policy
    import torch
    from bots_client import PoolConfig, SelectorClient

    torch.set_num_threads(1)
    cfg: Config = job["cfg"]
    method, seed, prep = job["method"], job["seed"], job["prep"]
    progress = job.get("progress")
    pool, held = prep["pool"], policy.Encoded(prep["held"])
    enc = policy.Encoded(pool)
    index = {p.key: i for i, p in enumerate(pool)}
    preset, target = parse_method(method)
    name = f"rl-{method.replace('+', '_')}-s{seed}"  # pool names allow [A-Za-z0-9._-]
    run_id = f"{name}-run"
    model = policy.build_model(seed=0)
    model.load_state_dict(torch.load(Path(job["workdir"]) / "base.pt"))
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    n, bsz = cfg.rollouts, cfg.batch_size

    def evaluate(step: int) -> tuple[float, float]:
        # Common random numbers: every method's evaluation at a step uses the same seed.
        r = policy.pass_rates(model, held, cfg.eval_samples, seed=10_000 + step)
        return float(r.mean()), float(policy.greedy_accuracy(model, held).mean())

    log_steps: list[dict[str, Any]] = []
    evals = [(0, *evaluate(0))]
    rollouts_total = 0
    t0 = time.monotonic()
    selections = 0
    with SelectorClient(job["address"]) as client:
        client.create_pool(
            name,
            _pool_tasks(prep, needs_embeddings(method)),
            preset=preset,
            config=PoolConfig(seed=seed, pseudo_rollouts=float(n), target=target),
        )
        for step in range(1, cfg.steps + 1):
            kept_idx: list[int] = []
            kept_seq: list[torch.Tensor] = []
            kept_r: list[torch.Tensor] = []
            generated: list[tuple[float, float]] = []
            rounds = cfg.dapo_max_rounds if method == "dapo" else 1
            audit: list[dict[str, Any]] = []
            for _ in range(rounds):
                sel = client.select_batch(
                    name, bsz, run_id=run_id, step=selections, expected_trials=float(n)
                )
                selections += 1
                idx = [index[k] for k in sel.keys]
                p = enc.prompts[idx].repeat_interleave(n, 0)
                seq = policy.generate(model, p, gen)
                r = policy.rewards(seq, enc.targets[idx].repeat_interleave(n, 0))
                rollouts_total += len(r)
                succ = r.view(len(idx), n).sum(1)
                outcomes = [(k, float(s), float(n)) for k, s in zip(sel.keys, succ.tolist())]
                client.report_outcomes(name, outcomes, selection_id=sel.selection_id)
                audit.append(
                    {"selection": sel.selection_id, "keys": list(sel.keys), "outcomes": outcomes}
                )
                generated += [(float(s), float(n)) for s in succ.tolist()]
                for j, i in enumerate(idx):
                    s = float(succ[j])
                    if method == "dapo" and s in (0.0, float(n)):
                        continue  # DAPO's dynamic sampling: drop groups without signal
                    kept_idx.append(i)
                    kept_seq.append(seq[j * n : (j + 1) * n])
                    kept_r.append(r[j * n : (j + 1) * n])
                if len(kept_idx) >= bsz:
                    break
            kept_idx, kept_seq, kept_r = kept_idx[:bsz], kept_seq[:bsz], kept_r[:bsz]
            if kept_idx:
                prompts = enc.prompts[kept_idx].repeat_interleave(n, 0)
                policy.grpo_step(
                    model, opt, prompts, torch.cat(kept_seq), torch.cat(kept_r), len(kept_idx)
                )
            succ_arr = np.array([s for s, _ in generated])
            log_steps.append(
                {
                    "rollouts": rollouts_total,
                    "etr": float(np.mean((succ_arr > 0) & (succ_arr < n))),
                    "trained": [pool[i].key for i in kept_idx],
                    "audit": audit,
                }
            )
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evals.append((step, *evaluate(step)))
            if progress is not None:
                progress.put(1)
        info = client.get_pool(name)
    return {
        "method": method,
        "seed": seed,
        "pool": name,
        "evals": evals,
        "steps": log_steps,
        "seconds": time.monotonic() - t0,
        "steps_applied": info.steps_applied,
        "selections": selections,
        "capability": info.capability,
    }


def start_server(tmp: str) -> Any:
    """An in-process selector server on a free port of 127.0.0.1, embedded store in ``tmp``."""
    from bots_server._app import start_server as start
    from bots_server._settings import ServerSettings

    return start(
        ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=os.path.join(tmp, "data"),
            fsync=False,
            log_level="WARNING",
            metrics_port=-1,
        )
    )


def run_all(
    cfg: Config,
    out: Path,
    *,
    server: str | None = None,
    show_progress: bool = True,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Runs the whole comparison; writes results into ``out``; returns the results dict."""
    import report
    import torch
    from bots_eval._progress import Progress

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    log(f"config: {json.dumps(dataclasses.asdict(cfg))}")
    with tempfile.TemporaryDirectory(prefix="bots-rl-") as tmp:
        prep = prepare(cfg, Path(tmp), log, cache)
        t_prep = time.monotonic() - t_start
        srv = None if server else start_server(tmp)
        address = server or srv.address
        log(f"selector server on {address}")
        jobs = [
            {"cfg": cfg, "method": m, "seed": s, "prep": prep, "workdir": tmp, "address": address}
            for s in cfg.seeds
            for m in cfg.methods
        ]
        bar = Progress("GRPO steps", len(jobs) * cfg.steps, enabled=show_progress)
        runs: list[dict[str, Any]] = []
        try:
            if cfg.workers <= 1:
                for job in jobs:
                    runs.append(train_one(job))
                    bar.update(cfg.steps)
            else:
                ctx = mp.get_context("spawn")
                with ctx.Manager() as manager, ctx.Pool(cfg.workers) as workers:
                    q = manager.Queue()
                    pending = workers.map_async(train_one, [{**j, "progress": q} for j in jobs])
                    while not pending.ready():
                        with contextlib.suppress(queue.Empty):
                            bar.update(q.get(timeout=0.5))
                    runs = pending.get()
            trl = None
            if cfg.trl_steps > 0:
                import trl_leg

                log(f"TRL leg: BotsGRPOTrainer, preset bots, {cfg.trl_steps} steps")
                trl = trl_leg.run_trl(cfg, prep, Path(tmp) / "base.pt", address, cfg.trl_steps, out)
                log(
                    f"TRL leg: {trl['steps_applied']} steps applied by the service, "
                    f"ETR {trl['etr_mean']:.2f}, held-out pass@1 {trl['pass1_before']:.3f} -> "
                    f"{trl['pass1_after']:.3f} in {trl['seconds']:.0f} s"
                )
        finally:
            if srv is not None:
                srv.stop(grace=0)
        bar.close()
    elapsed = time.monotonic() - t_start
    log(f"all runs done in {elapsed:.0f} s (preparation {t_prep:.0f} s)")
    results = report.write(out, cfg, prep, runs, trl, elapsed=elapsed, prep_seconds=t_prep)
    log(f"wrote {out / 'results.md'}, {out / 'curves.png'}, {out / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="rl_tasks_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="smoke configuration")
    parser.add_argument("--seeds", type=int, help="number of seeds")
    parser.add_argument("--steps", type=int, help="GRPO steps per run")
    parser.add_argument("--methods", help="comma-separated methods")
    parser.add_argument("--lr", type=float, help="GRPO learning rate")
    parser.add_argument("--workers", type=int, help="parallel training processes")
    parser.add_argument("--trl-steps", type=int, help="steps of the TRL leg (0: skip it)")
    parser.add_argument(
        "--server", help="a running server at host:port instead of an in-process one"
    )
    parser.add_argument("--cache", help="file to keep the warm-up and reference rates in, reused")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--similarity",
        action="store_true",
        help=f"methods {','.join(SIMILARITY_METHODS)} and no TRL leg (docs/similarity.md)",
    )
    parser.add_argument("--embedder", help="bots embed --model for similarity pools (minilm)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.similarity:
        cfg = dataclasses.replace(cfg, methods=SIMILARITY_METHODS, trl_steps=0)
    if args.embedder:
        cfg = dataclasses.replace(cfg, embedder=args.embedder)
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.methods:
        cfg = dataclasses.replace(cfg, methods=tuple(m.strip() for m in args.methods.split(",")))
    if args.trl_steps is not None:
        cfg = dataclasses.replace(cfg, trl_steps=args.trl_steps)
    if args.lr:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.workers:
        cfg = dataclasses.replace(cfg, workers=args.workers)
    results = run_all(
        cfg,
        Path(args.out),
        server=args.server,
        show_progress=not args.quiet,
        cache=Path(args.cache) if args.cache else None,
    )
    print(results["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

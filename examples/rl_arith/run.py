"""A small GRPO run on CPU that selects its batches through the BOTS service: BOTS vs uniform.

    python examples/rl_arith/run.py                 # full experiment (a few minutes on 2 cores)
    python examples/rl_arith/run.py --quick         # tiny smoke configuration

It pretrains a tiny policy from scratch, measures every pool task's pass rate
with two earlier checkpoints (the weak and strong references), starts a
selector server with an embedded store in a temporary directory, then trains
once per (method, seed) with batches drawn by `BotsBatchSampler` and outcomes
sent by `OutcomeReporter`. It writes curves.png, results.md and
results.json into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bots_adapters import effective_task_ratio
from bots_adapters.torch import BotsBatchSampler, OutcomeReporter
from bots_client import PoolConfig, SelectorClient, Task
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arith
import report


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the experiment."""

    methods: tuple[str, ...] = ("bots", "bots-p0.25", "uniform", "explicit_only")
    seeds: tuple[int, ...] = (0, 1, 2)
    pool_size: int = 2400
    held_out: int = 800
    max_digits: int = 8
    pretrain_steps: int = 200
    weak_step: int = 120
    reference_rl_steps: int = 150
    reference_samples: int = 16
    batch_size: int = 32
    rollouts: int = 8
    steps: int = 300
    eval_every: int = 10
    lr: float = 3e-3
    target: float = 0.5
    threads: int = 1


QUICK = Config(
    seeds=(0,),
    pool_size=240,
    held_out=80,
    max_digits=4,
    pretrain_steps=60,
    weak_step=30,
    reference_rl_steps=10,
    reference_samples=4,
    batch_size=8,
    rollouts=4,
    steps=12,
    eval_every=4,
)


class _Indices(torch.utils.data.Dataset[int]):
    """The pool as a dataset of task indices (the encoded tensors are looked up by index)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def grpo_step(
    policy: arith.ColumnPolicy,
    opt: torch.optim.Optimizer,
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    idx: torch.Tensor,
    rollouts: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """One GRPO update on the tasks ``idx``; returns the (tasks, rollouts) reward matrix."""
    px, py, pm = tensors
    x, y, m = (t[idx].repeat_interleave(rollouts, 0) for t in (px, py, pm))
    digits, logp = arith.sample(policy, x, m, gen)
    r = arith.correct(digits, y, m).view(len(idx), rollouts)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
    loss = -(adv.flatten() * logp).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return r


def prepare(cfg: Config, log: Any) -> dict[str, Any]:
    """Pretrains the base policy and measures the weak/strong reference pass rates."""
    torch.manual_seed(12345)
    policy = arith.ColumnPolicy()
    arith.pretrain(policy, cfg.weak_step, 2, cfg.max_digits, seed=7)
    weak = copy.deepcopy(policy)
    arith.pretrain(policy, cfg.pretrain_steps - cfg.weak_step, 2, cfg.max_digits, seed=8)
    base = copy.deepcopy(policy)

    pool = arith.make_problems(cfg.pool_size, cfg.max_digits, seed=1, prefix="t")
    held = arith.make_problems(
        cfg.held_out, cfg.max_digits, seed=2, prefix="h", exclude={(p.a, p.b) for p in pool}
    )
    tensors = arith.encode(pool, cfg.max_digits)

    # The strong reference: the base after a short uniform RL run of its own (another seed).
    strong = copy.deepcopy(base)
    opt = torch.optim.Adam(strong.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(999)
    gen = torch.Generator().manual_seed(999)
    for _ in range(cfg.reference_rl_steps):
        idx = torch.from_numpy(rng.choice(len(pool), cfg.batch_size, replace=False))
        grpo_step(strong, opt, tensors, idx, cfg.rollouts, gen)

    w = arith.pass_rates(weak, pool, cfg.max_digits, cfg.reference_samples, seed=3)
    g = arith.pass_rates(strong, pool, cfg.max_digits, cfg.reference_samples, seed=4)
    b = arith.pass_rates(base, pool, cfg.max_digits, cfg.reference_samples, seed=5)
    log(
        f"pool {len(pool)} tasks, held-out {len(held)}; mean pass rate weak {w.mean():.2f}, "
        f"base {b.mean():.2f}, strong {g.mean():.2f}; base tasks at 0: {(b == 0).mean():.0%}, "
        f"at 1: {(b == 1).mean():.0%}"
    )
    return {
        "base": base,
        "pool": pool,
        "held": arith.encode(held, cfg.max_digits),
        "tensors": tensors,
        "weak": w,
        "strong": g,
    }


def parse_method(method: str) -> tuple[str, float | None]:
    """``"bots"`` -> (preset, None); ``"bots-p0.25"`` -> ("bots", target p* = 0.25)."""
    preset, _, target = method.partition("-p")
    return preset, float(target) if target else None


def train_one(
    cfg: Config, prep: dict[str, Any], client: SelectorClient, method: str, seed: int, log: Any
) -> dict[str, Any]:
    """One RL run selecting through the service with ``method``'s preset."""
    pool = prep["pool"]
    keys = [p.key for p in pool]
    name = f"arith-{method}-s{seed}"
    preset, target = parse_method(method)
    tasks = [
        Task(p.key, weak=float(wk), strong=float(st))
        for p, wk, st in zip(pool, prep["weak"], prep["strong"])
    ]
    client.create_pool(
        name,
        tasks,
        preset=preset,
        config=PoolConfig(seed=seed, pseudo_rollouts=cfg.rollouts, target=target),
    )
    sampler = BotsBatchSampler(
        client,
        name,
        keys,
        cfg.batch_size,
        run_id=f"{name}-run",
        steps_per_epoch=cfg.steps,
        expected_trials=cfg.rollouts,
    )
    loader = DataLoader(_Indices(len(pool)), batch_sampler=sampler, collate_fn=torch.tensor)

    torch.manual_seed(seed)
    policy = copy.deepcopy(prep["base"])
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    hx, hy, hm = prep["held"]
    etr: list[float] = []
    digits: list[float] = []
    evals: list[tuple[int, float]] = [(0, arith.greedy_accuracy(policy, hx, hy, hm))]
    t0 = time.monotonic()
    with OutcomeReporter(client, name, mode="binary") as reporter:
        for step, idx in enumerate(loader, start=1):
            sel = sampler.current_selection
            assert sel is not None
            r = grpo_step(policy, opt, prep["tensors"], idx, cfg.rollouts, gen)
            rollout_keys = [keys[int(i)] for i in idx for _ in range(cfg.rollouts)]
            reporter.report_rewards(
                rollout_keys, r.flatten().tolist(), selection_id=sel.selection_id
            )
            outcomes = [
                (keys[int(i)], float(s), float(cfg.rollouts)) for i, s in zip(idx, r.sum(1))
            ]
            etr.append(effective_task_ratio(_outcomes(outcomes)))
            digits.append(float(np.mean([pool[int(i)].digits for i in idx])))
            # Lock-step like the paper: the next batch is drawn from the updated posterior.
            # (Only the wait is here; the report itself was sent while the update ran.)
            reporter.flush()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evals.append((step, arith.greedy_accuracy(policy, hx, hy, hm)))
                if step % (cfg.eval_every * 10) == 0 or step == cfg.steps:
                    log(
                        f"  {method:<13} seed {seed} step {step:>4}/{cfg.steps} "
                        f"held-out {evals[-1][1]:.3f} ETR(last 50) {np.mean(etr[-50:]):.2f}"
                    )
    info = client.get_pool(name)
    return {
        "method": method,
        "seed": seed,
        "etr": etr,
        "digits": digits,
        "evals": evals,
        "seconds": time.monotonic() - t0,
        "steps_applied": info.steps_applied,
        "capability": info.capability,
    }


def _outcomes(rows: list[tuple[str, float, float]]) -> list[Any]:
    from bots_client import Outcome

    return [Outcome(k, s, t) for k, s, t in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="rl_arith_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    parser.add_argument("--steps", type=int, help="RL steps per run")
    parser.add_argument("--target", type=float, help="held-out accuracy for steps-to-target")
    parser.add_argument(
        "--methods", help="comma-separated presets (default bots,uniform,explicit_only)"
    )
    parser.add_argument(
        "--server", help="use a running server at host:port instead of starting one"
    )
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else Config()
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.target is not None:
        cfg = dataclasses.replace(cfg, target=args.target)
    if args.methods:
        cfg = dataclasses.replace(cfg, methods=tuple(m.strip() for m in args.methods.split(",")))
    torch.set_num_threads(cfg.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    log(f"config: {json.dumps(dataclasses.asdict(cfg))}")
    prep = prepare(cfg, log)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bots-rl-") as tmp:
        server = None
        if args.server:
            target = args.server
        else:
            from bots_server._app import start_server
            from bots_server._settings import ServerSettings

            fields = ServerSettings.__dataclass_fields__
            extra = {"metrics_port": -1} if "metrics_port" in fields else {}
            server = start_server(
                ServerSettings(
                    host="127.0.0.1",
                    port=0,
                    data_dir=os.path.join(tmp, "data"),
                    fsync=False,
                    log_level="WARNING",
                    **extra,
                )
            )
            target = server.address
            log(f"selector server on {target} (embedded store in {tmp})")
        try:
            with SelectorClient(target) as client:
                total = len(cfg.methods) * len(cfg.seeds)
                for i, (seed, method) in enumerate((s, m) for s in cfg.seeds for m in cfg.methods):
                    log(f"run {i + 1}/{total}: {method} seed {seed}")
                    runs.append(train_one(cfg, prep, client, method, seed, log))
        finally:
            if server is not None:
                server.stop(grace=0)
    summary = report.write(out, cfg, runs, elapsed=time.monotonic() - t_start)
    log(f"wrote {out / 'curves.png'}, {out / 'results.md'}, {out / 'results.json'}")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

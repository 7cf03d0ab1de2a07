"""Table (markdown), figure (PNG) and raw results (JSON) of the RL comparison, with the metrics of bots_eval."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from bots_eval._metrics import (
    Interval,
    best_so_far_ratio,
    curve_ci,
    mean_ci,
    rolling_mean,
    steps_to_reach,
    time_to_baseline,
)

LABELS = {
    "uniform": "Uniform",
    "bots": "BOTS (preset `bots`, p* = 0.5)",
    "explicit_only": "Explicit-only (MoPPS-like)",
    "implicit_only": "Implicit-only (DOTS-like)",
    "dapo": "DAPO dynamic sampling (uniform + filter)",
    "bots-p0.25": "BOTS, p* = 0.25",
    "similarity": "BOTS, similarity (no references)",
    "bots+similarity": "BOTS, interpolation + similarity",
}
COLORS = {
    "uniform": "tab:gray",
    "bots": "tab:blue",
    "explicit_only": "tab:orange",
    "implicit_only": "tab:purple",
    "dapo": "tab:red",
    "bots-p0.25": "tab:green",
    "similarity": "tab:cyan",
    "bots+similarity": "tab:olive",
}


def label(method: str) -> str:
    """Display name of a method."""
    if method in LABELS:
        return LABELS[method]
    if method.startswith("bots-p"):
        return f"BOTS, p* = {method[6:]}"
    return method


def _by_method(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        out.setdefault(r["method"], []).append(r)
    return out


def _curve(run: dict[str, Any], col: int) -> np.ndarray:
    """Held-out sampled pass@1 (col 1) or greedy accuracy (col 2) at the evaluated steps."""
    return np.array([e[col] for e in run["evals"]], dtype=np.float64)


def _rollouts_at(run: dict[str, Any], step: float) -> float:
    if math.isinf(step) or math.isnan(step):
        return math.inf
    return 0.0 if step == 0 else float(run["steps"][int(step) - 1]["rollouts"])


def summarize(cfg: Any, prep: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method intervals over seeds; TTB/BSF are paired with uniform's run of the same seed."""
    groups = _by_method(runs)
    grid = [e[0] for e in runs[0]["evals"]]
    base_pr = prep["rates"]["base"]
    key_base = {p.key: float(base_pr[i]) for i, p in enumerate(prep["pool"])}
    uni = {r["seed"]: r for r in groups.get("uniform", [])}
    target = float(np.mean([_curve(r, 1)[-1] for r in uni.values()])) if uni else math.nan
    early = max(1, len(runs[0]["steps"]) // 10)
    table: dict[str, Any] = {"target_pass1": target, "methods": {}}
    for method, rs in groups.items():
        pass1 = [_curve(r, 1) for r in rs]
        reach_idx = [steps_to_reach(c, target) for c in pass1]
        reach_steps = [grid[int(i)] if math.isfinite(i) else math.inf for i in reach_idx]
        row: dict[str, Interval] = {
            "final_pass1": mean_ci([c[-1] for c in pass1]),
            "final_greedy": mean_ci([_curve(r, 2)[-1] for r in rs]),
            "steps_to_target": mean_ci(reach_steps),
            "rollouts_to_target": mean_ci(
                [_rollouts_at(r, s) / 1000 for r, s in zip(rs, reach_steps)]
            ),
            "rollouts_total": mean_ci([r["steps"][-1]["rollouts"] / 1000 for r in rs]),
            "etr_early": mean_ci([np.mean([s["etr"] for s in r["steps"][:early]]) for r in rs]),
            "etr_mean": mean_ci([np.mean([s["etr"] for s in r["steps"]]) for r in rs]),
            "trained_base0": mean_ci(
                [np.mean([key_base[k] == 0 for s in r["steps"] for k in s["trained"]]) for r in rs]
            ),
            "trained_base1": mean_ci(
                [np.mean([key_base[k] == 1 for s in r["steps"] for k in s["trained"]]) for r in rs]
            ),
        }
        paired = [(r, uni[r["seed"]]) for r in rs if r["seed"] in uni]
        if paired:
            for x in (0.5, 1.0):
                tag = int(x * 100)
                row[f"ttb{tag}"] = mean_ci(
                    [time_to_baseline(_curve(r, 1), _curve(b, 1), x) for r, b in paired]
                )
                row[f"bsf{tag}"] = mean_ci(
                    [best_so_far_ratio(_curve(r, 1), _curve(b, 1), x) for r, b in paired]
                )
        table["methods"][method] = row
    return table


def _f(iv: Interval, digits: int = 3) -> str:
    if math.isnan(iv.mean):
        return f"never ({iv.censored} of {iv.censored})" if iv.censored else "n/a"
    text = f"{iv.mean:.{digits}f}"
    if not math.isnan(iv.half_width):
        text += f" ± {iv.half_width:.{digits}f}"
    if iv.censored:
        text += f" ({iv.censored} never)"
    return text


def markdown(cfg: Any, table: dict[str, Any], elapsed: float, prep_seconds: float) -> str:
    """The results table."""
    lines = [
        f"| method | held-out pass@1 at step {cfg.steps} | greedy accuracy | "
        f"steps to {table['target_pass1']:.3f} | rollouts to {table['target_pass1']:.3f} (k) | "
        "TTB(50%) | TTB(100%) | BSF(50%) | BSF(100%) | ETR, first 10% | mean ETR | "
        "rollouts, all (k) | trained tasks at base 0 / 1 |",
        "|---|" + "---:|" * 13,
    ]
    for method, row in table["methods"].items():
        lines.append(
            f"| {label(method)} | {_f(row['final_pass1'])} | {_f(row['final_greedy'])} | "
            f"{_f(row['steps_to_target'], 0)} | {_f(row['rollouts_to_target'], 1)} | "
            f"{_f(row.get('ttb50', Interval(math.nan, math.nan, 0)), 2)} | "
            f"{_f(row.get('ttb100', Interval(math.nan, math.nan, 0)), 2)} | "
            f"{_f(row.get('bsf50', Interval(math.nan, math.nan, 0)), 3)} | "
            f"{_f(row.get('bsf100', Interval(math.nan, math.nan, 0)), 3)} | "
            f"{_f(row['etr_early'], 2)} | {_f(row['etr_mean'], 2)} | "
            f"{_f(row['rollouts_total'], 1)} | "
            f"{row['trained_base0'].mean:.0%} / {row['trained_base1'].mean:.0%} |"
        )
    n = len(cfg.seeds)
    lines += [
        "",
        f"{n} seeds per method, mean ± 95 % t-interval over seeds. Target = uniform's mean "
        f"held-out sampled pass@1 at step {cfg.steps}; steps/rollouts to it are the first "
        f"evaluation (every {cfg.eval_every} steps) at or above it, '(k never)' counts seeds "
        "that did not reach it. TTB/BSF as in docs/algorithm.md §6, each seed paired with "
        "uniform's run of the same seed, on the evaluation grid. ETR for DAPO counts every "
        f"generated group. Wall time {elapsed:.0f} s (preparation {prep_seconds:.0f} s).",
    ]
    return "\n".join(lines) + "\n"


def plot(out: Path, cfg: Any, runs: list[dict[str, Any]]) -> Path:
    """Four panels: pass@1 vs steps, pass@1 vs rollouts, ETR over steps, greedy accuracy vs steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4))
    for method, rs in _by_method(runs).items():
        color, name = COLORS.get(method), label(method)
        grid = np.array([e[0] for e in rs[0]["evals"]])
        for ax, col in ((axes[0, 0], 1), (axes[1, 1], 2)):
            mean, half = curve_ci([_curve(r, col) for r in rs])
            ax.plot(grid, mean, color=color, label=name)
            ax.fill_between(grid, mean - half, mean + half, color=color, alpha=0.15)
        roll = np.array(
            [[0.0] + [r["steps"][s - 1]["rollouts"] / 1000 for s in grid[1:]] for r in rs]
        )
        mean, half = curve_ci([_curve(r, 1) for r in rs])
        axes[0, 1].plot(roll.mean(0), mean, color=color, label=name)
        axes[0, 1].fill_between(roll.mean(0), mean - half, mean + half, color=color, alpha=0.15)
        etr = [rolling_mean([s["etr"] for s in r["steps"]], 10) for r in rs]
        mean, half = curve_ci(etr)
        xs = np.arange(1, len(mean) + 1)
        axes[1, 0].plot(xs, mean, color=color, label=name)
        axes[1, 0].fill_between(xs, mean - half, mean + half, color=color, alpha=0.15)
    axes[0, 0].set(title="Held-out sampled pass@1", xlabel="GRPO step", ylabel="pass@1")
    axes[0, 1].set(
        title="Held-out sampled pass@1 vs rollouts generated",
        xlabel="rollouts generated (thousands)",
        ylabel="pass@1",
    )
    axes[1, 0].set(
        title="Effective task ratio (rolling mean, 10 steps)", xlabel="GRPO step", ylabel="ETR"
    )
    axes[1, 1].set(title="Held-out greedy accuracy", xlabel="GRPO step", ylabel="accuracy")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"GRPO on CPU, {len(runs[0]['steps'])} steps x {cfg.batch_size} tasks x "
        f"{cfg.rollouts} rollouts; mean and 95 % CI over {len(cfg.seeds)} seeds"
    )
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def world_table(prep: dict[str, Any]) -> str:
    """Mean measured pass rates of weak / base / strong per family and level."""
    pool, rates = prep["pool"], prep["rates"]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pool):
        groups.setdefault(p.group, []).append(i)
    lines = ["| group | weak | base | strong |", "|---|---:|---:|---:|"]
    for g, idx in groups.items():
        lines.append(
            f"| {g} | {rates['weak'][idx].mean():.2f} | {rates['base'][idx].mean():.2f} | "
            f"{rates['strong'][idx].mean():.2f} |"
        )
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Interval):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def write(
    out: Path,
    cfg: Any,
    prep: dict[str, Any],
    runs: list[dict[str, Any]],
    trl: dict[str, Any] | None,
    elapsed: float,
    prep_seconds: float,
) -> dict[str, Any]:
    """Writes results.md, curves.png and results.json; returns them (runs with their audit logs)."""
    table = summarize(cfg, prep, runs)
    md = markdown(cfg, table, elapsed, prep_seconds)
    if trl is not None:
        md += (
            f"\nTRL leg (`BotsGRPOTrainer`, preset `bots`, seed 0): {trl['steps']} steps, "
            f"{trl['steps_applied']} selections applied by the service, mean ETR "
            f"{trl['etr_mean']:.2f} (TRL's 1 - frac_reward_zero_std; the service's rolling ETR "
            f"{trl['etr_service_rolling']:.2f}), held-out sampled pass@1 "
            f"{trl['pass1_before']:.3f} → {trl['pass1_after']:.3f}, {trl['seconds']:.0f} s.\n"
        )
    (out / "results.md").write_text(md + "\nMeasured pass rates per group:\n\n" + world_table(prep))
    slim = [
        {
            **{k: v for k, v in r.items() if k != "steps"},
            "rollouts": [s["rollouts"] for s in r["steps"]],
            "etr": [s["etr"] for s in r["steps"]],
        }
        for r in runs
    ]
    (out / "results.json").write_text(
        json.dumps(
            {
                "config": dataclasses.asdict(cfg),
                "elapsed_seconds": elapsed,
                "summary": _jsonable(table),
                "trl": trl,
                "runs": slim,
            },
            indent=1,
            default=float,
        )
    )
    plot(out, cfg, runs)
    return {"markdown": md, "summary": table, "runs": runs, "trl": trl}

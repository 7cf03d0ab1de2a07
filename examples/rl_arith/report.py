"""Curves (PNG), a markdown table and raw results (JSON) of the RL example."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {
    "bots": "BOTS (p* = 0.5)",
    "bots-p0.25": "BOTS (p* = 0.25)",
    "uniform": "Uniform",
    "explicit_only": "BOTS explicit-only",
}
COLORS = {
    "bots": "tab:blue",
    "bots-p0.25": "tab:green",
    "uniform": "tab:gray",
    "explicit_only": "tab:orange",
}


def steps_to(steps: list[int], acc: list[float], target: float) -> float:
    """First evaluated step whose accuracy reaches ``target`` (NaN if never)."""
    for s, a in zip(steps, acc):
        if a >= target:
            return float(s)
    return math.nan


def _by_method(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r["method"], []).append(r)
    return out


def _fmt(values: list[float], digits: int = 3) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "not reached"
    mean = float(np.mean(v))
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    miss = len(values) - len(v)
    tail = f" ({miss} of {len(values)} not reached)" if miss else ""
    return f"{mean:.{digits}f} ± {sd:.{digits}f}{tail}"


def _num(x: float) -> str:
    return "not reached" if math.isnan(x) else f"{x:.2f}"


def summarize(cfg: Any, runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-method numbers: final/best accuracy, ETR, steps-to-target, TTB and BSF vs uniform."""
    groups = _by_method(runs)
    table: dict[str, dict[str, Any]] = {}
    base_curve = None
    if "uniform" in groups:
        base_curve = np.mean([[a for _, a in r["evals"]] for r in groups["uniform"]], axis=0)
    for method, rs in groups.items():
        steps = [s for s, _ in rs[0]["evals"]]
        accs = [[a for _, a in r["evals"]] for r in rs]
        mean_curve = np.mean(accs, axis=0)
        row: dict[str, Any] = {
            "final": [a[-1] for a in accs],
            "etr": [float(np.mean(r["etr"])) for r in rs],
            "etr_first_50": [float(np.mean(r["etr"][:50])) for r in rs],
            "to_target": [steps_to(steps, a, cfg.target) for a in accs],
            "digits_first_100": [float(np.mean(r["digits"][:100])) for r in rs],
            "seconds": [r["seconds"] for r in rs],
        }
        if base_curve is not None:
            for frac in (0.5, 1.0):
                i = max(1, round(frac * (len(steps) - 1)))
                goal = float(base_curve[i])
                reach = steps_to(steps, list(mean_curve), goal)
                row[f"ttb{int(frac * 100)}"] = (
                    reach / steps[i] if not math.isnan(reach) else math.nan
                )
                row[f"bsf{int(frac * 100)}"] = float(
                    mean_curve[: i + 1].max() / base_curve[: i + 1].max()
                )
        table[method] = row
    return table


def markdown(cfg: Any, table: dict[str, dict[str, Any]], elapsed: float) -> str:
    """The results table as markdown."""
    lines = [
        f"| method | held-out accuracy at step {cfg.steps} | mean ETR | ETR, first 50 steps | "
        f"steps to {cfg.target:.0%} held-out | TTB(50%) | TTB(100%) | BSF(50%) | "
        "digits of selected sums, first 100 steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in table.items():
        ttb50 = row.get("ttb50", math.nan)
        ttb100 = row.get("ttb100", math.nan)
        bsf = row.get("bsf50", math.nan)
        lines.append(
            f"| {LABELS.get(method, method)} | {_fmt(row['final'])} | {_fmt(row['etr'], 2)} | "
            f"{_fmt(row['etr_first_50'], 2)} | {_fmt(row['to_target'], 0)} | "
            f"{_num(ttb50)} | {_num(ttb100)} | {_num(bsf)} | {_fmt(row['digits_first_100'], 1)} |"
        )
    lines.append("")
    lines.append(
        f"{len(next(iter(table.values()))['final'])} seeds per method, mean ± sd; "
        f"TTB(x%) = steps to reach uniform's mean accuracy at x% of the {cfg.steps} steps, "
        "relative to uniform's (< 1 is faster); BSF(50%) = best accuracy in the first half "
        f"relative to uniform's (> 1 is better). Total wall time {elapsed:.0f} s."
    )
    return "\n".join(lines) + "\n"


def plot(out: Path, cfg: Any, runs: list[dict[str, Any]]) -> Path:
    """Two panels: ETR (rolling mean over 10 steps) and held-out accuracy, mean and range over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, rs in _by_method(runs).items():
        color = COLORS.get(method)
        label = LABELS.get(method, method)
        w = min(10, len(rs[0]["etr"]))
        etr = np.array([np.convolve(r["etr"], np.ones(w) / w, mode="valid") for r in rs])
        xs = np.arange(w, w + etr.shape[1])
        axes[0].plot(xs, etr.mean(0), color=color, label=label)
        axes[0].fill_between(xs, etr.min(0), etr.max(0), color=color, alpha=0.15)
        steps = [s for s, _ in rs[0]["evals"]]
        acc = np.array([[a for _, a in r["evals"]] for r in rs])
        axes[1].plot(steps, acc.mean(0), color=color, label=label)
        axes[1].fill_between(steps, acc.min(0), acc.max(0), color=color, alpha=0.15)
    axes[0].set(title="Effective task ratio (rolling mean, 10 steps)", xlabel="step", ylabel="ETR")
    axes[1].axhline(cfg.target, color="k", lw=0.6, ls=":")
    axes[1].set(title="Held-out exact-match accuracy (greedy)", xlabel="step", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out: Path, cfg: Any, runs: list[dict[str, Any]], elapsed: float) -> str:
    """Writes curves.png, results.md and results.json; returns the markdown table."""
    table = summarize(cfg, runs)
    md = markdown(cfg, table, elapsed)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(
        json.dumps(
            {
                "config": dataclasses.asdict(cfg),
                "elapsed_seconds": elapsed,
                "summary": table,
                "runs": runs,
            },
            indent=1,
            default=float,
        )
    )
    plot(out, cfg, runs)
    return md

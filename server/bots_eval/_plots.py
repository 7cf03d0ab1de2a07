"""PNG figures of a simulation (matplotlib, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bots_eval._families import SIMILARITY_GOAL, summarize_families
from bots_eval._methods import LAMBDA, RHO
from bots_eval._metrics import FloatArray, curve_ci, rolling_mean
from bots_eval._runner import ARMS, TRAINER_ARMS, Experiment
from bots_eval._sharing import reach_step, summarize_sharing
from bots_eval._summary import FRACTIONS, VariantSummary, summarize_trainers

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_COLORS = {
    "uniform": "#7f7f7f",
    "easy_to_hard": "#8c564b",
    "explicit_only": "#1f77b4",
    "implicit_only": "#ff7f0e",
    "greedy": "#9467bd",
    "bots": "#d62728",
}
_ARM_LABELS = {name: arm.label for name, arm in ARMS.items()}
_ARM_COLORS = {
    "separate": "#1f77b4",
    "shared": "#d62728",
    "one_run": "#7f7f7f",
    "one_run_per_run_step": "#2ca02c",
    "runs_per_pool_step": "#ff7f0e",
}
_DPI = 110


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(ncols: int, width: float = 6.0, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI)
    return path


def _window(steps: int) -> int:
    return max(1, steps // 30)


def _band(ax: Axes, curves: FloatArray, label: str, color: Any, smooth: int, start: int) -> None:
    """Mean curve with its 95 % band; x runs from ``start`` (0: before any step)."""
    mean, half = curve_ci(curves)
    if smooth > 1:
        mean = rolling_mean(mean, smooth)
        half = rolling_mean(half, smooth)
    x = np.arange(start, start + len(mean))
    ax.plot(x, mean, label=label, color=color, lw=1.6)
    ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.18, lw=0)


def _etr_curves(ax: Axes, exp: Experiment, names: Sequence[str], title: str) -> None:
    steps = exp.config.steps
    for name in names:
        curves = np.stack([r.etr for r in exp.runs[name]])
        _band(ax, curves, exp.variants[name].label, _COLORS.get(name), _window(steps), 1)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"effective task ratio (trailing mean of {_window(steps)} steps)")
    ax.set_title(title)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_plots(exp: Experiment, summaries: dict[str, VariantSummary], out: Path) -> list[Path]:
    """Writes every figure into ``out``; returns their paths."""
    methods = [m for m in exp.variants if "=" not in m]
    written = [
        _plot_etr(exp, methods, out / "etr.png"),
        _plot_accuracy(exp, methods, out / "accuracy.png"),
        _plot_ttb_bsf(summaries, methods, out / "ttb_bsf.png"),
        _plot_estimator(exp, methods, out / "estimator.png"),
    ]
    if exp.sweeps:
        written.append(_plot_sweeps(exp, out / "sweeps.png"))
    if exp.trainer_runs:
        written.append(_plot_trainers(exp, out / "trainers.png"))
    if exp.sharing_runs:
        written.append(_plot_sharing(exp, out / "sharing.png"))
    if exp.family_runs:
        written.append(_plot_families(exp, out / "similarity.png"))
    return written


def _plot_etr(exp: Experiment, methods: list[str], path: Path) -> Path:
    fig, (ax,) = _figure(1, width=7.5)
    _etr_curves(ax, exp, methods, "Effective task ratio per step (mean, 95 % CI over seeds)")
    return _save(fig, path)


def _plot_accuracy(exp: Experiment, methods: list[str], path: Path) -> Path:
    fig, axes = _figure(2)
    base = np.stack([r.accuracy for r in exp.runs["uniform"]])
    for name in methods:
        curves = np.stack([r.accuracy for r in exp.runs[name]])
        label, color = exp.variants[name].label, _COLORS.get(name)
        _band(axes[0], curves, label, color, 1, 0)
        # Seeds share their world, so the paired difference has a much tighter interval.
        _band(axes[1], curves - base, label, color, 1, 0)
    axes[0].set_title("Held-out accuracy (mean, 95 % CI over seeds)")
    axes[0].set_ylabel("held-out accuracy")
    axes[1].set_title("Gain over uniform, paired by seed (mean, 95 % CI)")
    axes[1].set_ylabel("held-out accuracy - uniform's")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _plot_ttb_bsf(summaries: dict[str, VariantSummary], methods: list[str], path: Path) -> Path:
    fig, axes = _figure(2)
    others = [m for m in methods if m != "uniform"]
    width = 0.8 / max(1, len(others))
    xs = np.arange(len(FRACTIONS))
    for ax, key, title in (
        (axes[0], "ttb", "TTB(x) vs uniform (< 1 is better)"),
        (axes[1], "bsf", "BSF(x) vs uniform (> 1 is better)"),
    ):
        for i, name in enumerate(others):
            s = summaries[name]
            table = s.ttb if key == "ttb" else s.bsf
            means = np.array([table[x].mean for x in FRACTIONS])
            halves = np.nan_to_num(np.array([table[x].half_width for x in FRACTIONS]))
            ax.bar(
                xs + (i - (len(others) - 1) / 2) * width,
                np.nan_to_num(means, nan=0.0),
                width,
                yerr=halves,
                label=s.label,
                color=_COLORS.get(name),
                capsize=2,
            )
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(xs, [f"{int(x * 100)} %" for x in FRACTIONS])
        ax.set_xlabel("share of the training budget x")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    bsf = [summaries[n].bsf[x].mean for n in others for x in FRACTIONS]
    finite = [v for v in bsf if np.isfinite(v)]
    if finite:
        axes[1].set_ylim(min(0.95, min(finite) - 0.02), max(finite) + 0.03)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    return _save(fig, path)


def _plot_estimator(exp: Experiment, methods: list[str], path: Path) -> Path:
    fig, (ax,) = _figure(1, width=6.0, height=5.0)
    bins = np.linspace(0.0, 1.0, 11)
    for name in [m for m in ("uniform", "bots") if m in methods]:
        est = np.concatenate([r.estimate for r in exp.runs[name]])
        obs = np.concatenate([r.observed for r in exp.runs[name]])
        which = np.clip(np.digitize(est, bins) - 1, 0, len(bins) - 2)
        counts = np.bincount(which, minlength=len(bins) - 1)
        sums = np.bincount(which, weights=obs, minlength=len(bins) - 1)
        centres = np.bincount(which, weights=est, minlength=len(bins) - 1)
        ok = counts > 0
        ax.plot(
            centres[ok] / counts[ok],
            sums[ok] / counts[ok],
            "o-",
            color=_COLORS.get(name),
            label=f"{exp.variants[name].label}: tasks it evaluated",
        )
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="perfect calibration")
    ax.set_xlabel("implicit estimate p~ when selected (binned)")
    ax.set_ylabel("mean observed pass rate")
    ax.set_title("Interpolation estimator p~ vs observed pass rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_sweeps(exp: Experiment, path: Path) -> Path:
    names = list(exp.sweeps)
    fig, axes = _figure(len(names))
    cmap_values = np.linspace(0.15, 0.9, 8)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    steps = exp.config.steps
    for ax, sweep in zip(axes, names, strict=True):
        points = exp.sweeps[sweep]
        for i, (_, variant) in enumerate(points):
            curves = np.stack([r.etr for r in exp.runs[variant]])
            color = cmap(cmap_values[i % len(cmap_values)])
            _band(ax, curves, exp.variants[variant].label, color, _window(steps), 1)
        other = f"{RHO} = 0.1" if sweep == "lambda" else f"{LAMBDA} = 0.1"
        symbol = LAMBDA if sweep == "lambda" else RHO
        ax.set_title(f"BOTS, sweep over {symbol} ({other})")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"effective task ratio (trailing mean of {_window(steps)} steps)")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_trainers(exp: Experiment, path: Path) -> Path:
    fig, axes = _figure(2)
    method = exp.config.trainer_methods[0]
    colors = _ARM_COLORS

    def mean_curves(arm: str) -> FloatArray:
        groups = sorted(
            (g for g in exp.trainer_runs if g.method == method and g.arm == arm),
            key=lambda g: g.seed,
        )
        return np.stack([g.accuracy.mean(axis=0) for g in groups])

    separate = mean_curves("separate")
    for arm in TRAINER_ARMS:
        _band(axes[0], mean_curves(arm) - separate, _ARM_LABELS[arm], colors[arm], 1, 0)
    axes[0].set_title(
        f"{method}, {exp.config.trainers} trainers: accuracy gain over separate pools"
    )
    axes[0].set_xlabel("steps of each trainer")
    axes[0].set_ylabel("accuracy - separate pools' (paired by seed)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    rows = summarize_trainers(exp)
    labels = [f"{r.method}\n{_ARM_LABELS[r.arm]}" for r in rows]
    means = [r.steps_to_target.mean for r in rows]
    halves = [0.0 if np.isnan(r.steps_to_target.half_width) else r.steps_to_target.half_width
              for r in rows]  # fmt: skip
    axes[1].barh(np.arange(len(rows)), np.nan_to_num(means), xerr=halves,
                 color=[colors[r.arm] for r in rows], capsize=3)  # fmt: skip
    axes[1].set_yticks(np.arange(len(rows)), labels, fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("steps each trainer needs to reach uniform's final accuracy")
    axes[1].set_title("Steps to target (mean, 95 % CI over seeds)")
    axes[1].grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _k_axis(ax: Axes, rows: Sequence[Any]) -> None:
    ks = sorted({r.runs for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("runs sharing the pool K")


def _plot_sharing(exp: Experiment, path: Path) -> Path:
    rows = summarize_sharing(exp)
    fig, axes = _figure(3, width=5.2, height=4.4)
    arms = list(dict.fromkeys(r.arm for r in rows))
    panels = (
        (axes[0], "same", ("all",), "Same model: K runs on one pool"),
        (axes[1], "mixed", ("weak", "strong"),
         f"Mixed: odd runs start +{exp.config.head_start:g} stronger"),
    )  # fmt: skip
    offset = {arm: 0.04 * (i - (len(arms) - 1) / 2) for i, arm in enumerate(arms)}
    for ax, scenario, groups, title in panels:
        for arm in arms:
            for group in groups:
                sel = [r for r in rows if r.arm == arm and r.scenario == scenario
                       and r.group == group]  # fmt: skip
                if not sel:
                    continue
                ks = np.array([r.runs for r in sel], dtype=np.float64)
                means = np.array([r.ratio.mean for r in sel])
                halves = np.nan_to_num(np.array([r.ratio.half_width for r in sel]))
                default = arm == "shared"
                ax.errorbar(
                    ks * (1.0 + offset[arm]) * (1.03 if group == "strong" else 1.0),
                    means, yerr=halves, color=_ARM_COLORS.get(arm),
                    marker="s" if group == "strong" else "o",
                    ls="-" if group != "strong" else "--",
                    lw=2.0 if default else 1.0, capsize=3,
                    label=_ARM_LABELS[arm] if group != "strong" else None,
                )  # fmt: skip
        ax.axhline(1.0, color="black", lw=0.8)
        if scenario == "same":
            ax.axhline(0.9, color="black", lw=0.8, ls=":", label="goal 0.9")
        else:
            ax.plot([], [], "ko-", label="weak runs (circles, solid)")
            ax.plot([], [], "ks--", label="strong runs (squares, dashed)")
        _k_axis(ax, rows)
        ax.set_ylabel(
            f"steps to separate pools' accuracy at step {reach_step(exp.config.steps)}\n"
            "shared / separate (mean, 95 % CI over seeds)"
        )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    ax = axes[2]
    for arm in ["separate", *arms]:
        sel = [r for r in rows if r.arm == arm and r.scenario == "same"]
        if arm == "separate":
            sel = [r for r in rows if r.arm == arms[0] and r.scenario == "same"]
        if not sel:
            continue
        ks = np.array([r.runs for r in sel], dtype=np.float64)
        ms = [r.select_ms_separate.mean if arm == "separate" else r.select_ms.mean for r in sel]
        ax.plot(ks, ms, "o-", color=_ARM_COLORS.get(arm), label=_ARM_LABELS[arm])
    _k_axis(ax, rows)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("median ms per selection (in-process)")
    ax.set_title("Selection cost, same-model runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path)


def _plot_families(exp: Experiment, path: Path) -> Path:
    """Accuracy curves of the similarity experiment and each method's TTB(100 %)."""
    rows = summarize_families(exp)
    fig, axes = _figure(2)
    palette = ["#7f7f7f", "#9467bd", "#1f77b4", "#2ca02c", "#d62728"]
    for row, color in zip(rows, palette, strict=False):
        curves = np.stack([r.accuracy for r in exp.family_runs[row.method]])
        _band(axes[0], curves, row.label, color, 1, 0)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].set_title("Families world: held-out accuracy (mean, 95 % CI)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    y = np.arange(len(rows))
    means = [r.ttb.mean for r in rows]
    errs = [0.0 if math.isnan(r.ttb.half_width) else r.ttb.half_width for r in rows]
    axes[1].barh(y, means, xerr=errs, color=palette[: len(rows)])
    axes[1].axvline(1.0, color="k", lw=0.8)
    axes[1].axvline(SIMILARITY_GOAL, color="k", lw=0.8, ls="--", label="goal for similarity")
    axes[1].set_yticks(y, [r.method for r in rows])
    axes[1].invert_yaxis()
    axes[1].set_xlabel("steps to uniform's final accuracy / uniform's steps")
    axes[1].set_title("TTB(100 %) (< 1: faster than uniform)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3, axis="x")
    return _save(fig, path)

"""Numbers of a simulation: per-variant statistics over seeds, and the paper's four findings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bots_eval._families import family_goals, summarize_families
from bots_eval._methods import RHO
from bots_eval._metrics import (
    Interval,
    best_so_far_ratio,
    mean_ci,
    pearson,
    roc_auc,
    steps_to_reach,
    time_to_baseline,
)
from bots_eval._runner import BASELINE, TRAINER_ARMS, Experiment, RunResult
from bots_eval._sharing import SharingRow, summarize_sharing

FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
EARLY_FRACTION = 0.05
LATE_FRACTION = 0.25
# "No better than uniform": explicit-only's early ETR may exceed uniform's by
# less than this (ETR points). It is half the early gain BOTS typically shows.
COLD_START_MARGIN = 0.05
# Goals of the sharing experiment (issue 12): same-model runs sharing a pool need
# at most this share of the steps of separate pools; in the mixed scenario no
# group needs more steps than with pools of its own (mean ratio <= 1).
SAME_MODEL_GOAL = 0.9
MIXED_GOAL = 1.0


def early_steps(steps: int) -> int:
    """Length of the early (cold-start) window: the first 5 % of steps, at least 3."""
    return min(steps, max(3, math.ceil(EARLY_FRACTION * steps)))


def late_steps(steps: int) -> int:
    """Length of the late window: the last 25 % of steps."""
    return max(1, math.ceil(LATE_FRACTION * steps))


@dataclass(frozen=True)
class VariantSummary:
    """Statistics of one method or sweep variant over seeds (95 % intervals).

    Attributes:
        name: Variant name.
        label: Human-readable description.
        etr: Mean ETR over all steps.
        etr_early: Mean ETR over the early window.
        etr_late: Mean ETR over the late window.
        positive: Mean fraction with pass rate > 0.
        below_one: Mean fraction with pass rate < 1.
        final_accuracy: Held-out accuracy after the last step.
        coverage: Fraction of the pool selected at least once.
        ttb: TTB(x) relative to uniform, by fraction x.
        bsf: BSF(x) relative to uniform, by fraction x.
        pearson: Pearson(p~, observed pass rate) over the evaluated tasks.
        auc: ROC AUC of p~ for "observed pass rate > 1/2" over the evaluated tasks.
        truth_pearson: Pearson(p~, true p) over all tasks.
        truth_auc: ROC AUC of p~ for "true p > 1/2" over all tasks.
        select_ms: Median milliseconds per selection call.
        update_ms: Median milliseconds per report (engine update).
    """

    name: str
    label: str
    etr: Interval
    etr_early: Interval
    etr_late: Interval
    positive: Interval
    below_one: Interval
    final_accuracy: Interval
    coverage: Interval
    ttb: dict[float, Interval]
    bsf: dict[float, Interval]
    pearson: Interval
    auc: Interval
    truth_pearson: Interval
    truth_auc: Interval
    select_ms: Interval
    update_ms: Interval


def _per_seed(runs: Sequence[RunResult], fn: Callable[[RunResult], float]) -> Interval:
    return mean_ci([fn(r) for r in runs])


def summarize_variant(
    name: str, label: str, runs: Sequence[RunResult], baseline: Sequence[RunResult]
) -> VariantSummary:
    """Summarises one variant's runs; ``baseline`` holds uniform's runs for the same seeds."""
    steps = len(runs[0].etr)
    e, late = early_steps(steps), late_steps(steps)
    pairs = list(zip(runs, baseline, strict=True))
    return VariantSummary(
        name=name,
        label=label,
        etr=_per_seed(runs, lambda r: float(r.etr.mean())),
        etr_early=_per_seed(runs, lambda r: float(r.etr[:e].mean())),
        etr_late=_per_seed(runs, lambda r: float(r.etr[-late:].mean())),
        positive=_per_seed(runs, lambda r: float(r.positive.mean())),
        below_one=_per_seed(runs, lambda r: float(r.below_one.mean())),
        final_accuracy=_per_seed(runs, lambda r: float(r.accuracy[-1])),
        coverage=_per_seed(runs, lambda r: r.coverage),
        ttb={
            x: mean_ci([time_to_baseline(r.accuracy, b.accuracy, x) for r, b in pairs])
            for x in FRACTIONS
        },
        bsf={
            x: mean_ci([best_so_far_ratio(r.accuracy, b.accuracy, x) for r, b in pairs])
            for x in FRACTIONS
        },
        # NaN samples (no estimate yet, one class only) are left out by mean_ci.
        pearson=_per_seed(runs, lambda r: pearson(r.estimate, r.observed)),
        auc=_per_seed(runs, lambda r: roc_auc(r.estimate, r.observed > 0.5)),
        truth_pearson=_per_seed(runs, lambda r: r.truth_pearson),
        truth_auc=_per_seed(runs, lambda r: r.truth_auc),
        # Medians: a step's time is a few hundred microseconds, so one garbage
        # collection or thread start would dominate a mean.
        select_ms=_per_seed(runs, lambda r: 1e3 * float(np.median(r.select_seconds))),
        update_ms=_per_seed(runs, lambda r: 1e3 * float(np.median(r.update_seconds))),
    )


def summarize(exp: Experiment) -> dict[str, VariantSummary]:
    """Summaries of every variant, in the order they were planned."""
    base = exp.runs[BASELINE]
    return {
        name: summarize_variant(name, m.label, exp.runs[name], base)
        for name, m in exp.variants.items()
    }


@dataclass(frozen=True)
class TrainerSummary:
    """One arm of the trainers experiment for one method (95 % intervals over seeds).

    Attributes:
        method: Method name.
        arm: One of ``TRAINER_ARMS``.
        steps_to_target: Steps a trainer needs (mean over the K trainers) to
            reach the held-out accuracy uniform has at the end of the budget.
        etr: Mean ETR over all steps and trainers.
        etr_early: Mean ETR over the early window.
        final_accuracy: Mean held-out accuracy of the trainers at the end.
    """

    method: str
    arm: str
    steps_to_target: Interval
    etr: Interval
    etr_early: Interval
    final_accuracy: Interval


def trainer_steps(exp: Experiment, method: str, arm: str) -> list[float]:
    """Per seed: mean over trainers of the steps to reach uniform's final accuracy."""
    base = {r.seed: r for r in exp.runs[BASELINE]}
    out = []
    for g in exp.trainer_runs:
        if g.method == method and g.arm == arm:
            target = float(base[g.seed].accuracy[-1])
            out.append(float(np.mean([steps_to_reach(a, target) for a in g.accuracy])))
    return out


def summarize_trainers(exp: Experiment) -> list[TrainerSummary]:
    """Summaries of the trainers experiment, by method then arm."""
    out = []
    methods = list(dict.fromkeys(g.method for g in exp.trainer_runs))
    for method in methods:
        for arm in TRAINER_ARMS:
            groups = [g for g in exp.trainer_runs if g.method == method and g.arm == arm]
            if not groups:
                continue
            e = early_steps(groups[0].etr.shape[1])
            out.append(
                TrainerSummary(
                    method,
                    arm,
                    mean_ci(trainer_steps(exp, method, arm)),
                    mean_ci([float(g.etr.mean()) for g in groups]),
                    mean_ci([float(g.etr[:, :e].mean()) for g in groups]),
                    mean_ci([float(g.accuracy[:, -1].mean()) for g in groups]),
                )
            )
    return out


@dataclass(frozen=True)
class Finding:
    """One qualitative claim of the paper and whether the simulation reproduced it.

    Attributes:
        key: Short identifier.
        claim: The claim in words.
        held: Whether it held by the stated criterion.
        detail: The numbers behind the verdict.
    """

    key: str
    claim: str
    held: bool
    detail: str


def _paired(
    a: Sequence[RunResult], b: Sequence[RunResult], fn: Callable[[RunResult], float]
) -> Interval:
    return mean_ci([fn(x) - fn(y) for x, y in zip(a, b, strict=True)])


def _below_zero(iv: Interval) -> bool:
    """The whole 95 % interval is below zero (the mean, with a single seed)."""
    bound = iv.mean if math.isnan(iv.half_width) else iv.high
    return bound < 0


def _above_zero(iv: Interval) -> bool:
    """The whole 95 % interval is above zero (the mean, with a single seed)."""
    bound = iv.mean if math.isnan(iv.half_width) else iv.low
    return bound > 0


def findings(exp: Experiment) -> list[Finding]:
    """Checks the four qualitative findings the simulator should reproduce.

    A finding whose runs were not part of the experiment is left out.
    """
    out: list[Finding] = []
    runs = exp.runs
    steps = exp.config.steps
    e, late = early_steps(steps), late_steps(steps)
    uni = runs[BASELINE]
    if "bots" in runs:
        d = _paired(runs["bots"], uni, lambda r: float(r.etr.mean()))
        out.append(
            Finding(
                "bots_etr",
                "BOTS's effective task ratio exceeds uniform's",
                _above_zero(d),
                f"ETR(bots) - ETR(uniform) over all steps = {d.mean:+.3f} "
                f"(95 % CI ±{d.half_width:.3f}, {d.count} seeds)",
            )
        )
    if "explicit_only" in runs:
        d = _paired(runs["explicit_only"], uni, lambda r: float(r.etr[:e].mean()))
        detail = (
            f"first {e} steps: ETR(explicit_only) - ETR(uniform) = {d.mean:+.3f} "
            f"(±{d.half_width:.3f}); criterion < {COLD_START_MARGIN}"
        )
        if "bots" in runs:
            b = _paired(runs["bots"], uni, lambda r: float(r.etr[:e].mean()))
            detail += (
                f"; for comparison ETR(bots) - ETR(uniform) = {b.mean:+.3f} (±{b.half_width:.3f})"
            )
        out.append(
            Finding(
                "cold_start",
                f"explicit-only ({RHO} = 0) starts no better than uniform (cold start)",
                d.mean < COLD_START_MARGIN,
                detail,
            )
        )
    rho = dict(exp.sweeps.get("rho", []))
    big = max(rho, default=0.0)
    if 0.1 in rho and big >= 0.5:
        d = _paired(runs[rho[big]], runs[rho[0.1]], lambda r: float(r.etr[-late:].mean()))
        out.append(
            Finding(
                "large_rho",
                f"very large {RHO} ({big:g}) lowers late-training ETR compared with {RHO} = 0.1",
                _below_zero(d),
                f"last {late} steps: ETR({RHO}={big:g}) - ETR({RHO}=0.1) = {d.mean:+.3f} "
                f"(95 % CI ±{d.half_width:.3f})",
            )
        )
    if exp.trainer_runs:
        method = exp.config.trainer_methods[0]
        separate = trainer_steps(exp, method, "separate")
        k = exp.config.trainers
        for arm, how in (
            ("shared", "each trainer its own run"),
            ("one_run", "all trainers one run, as a pool without run ids"),
        ):
            shared = trainer_steps(exp, method, arm)
            d = mean_ci([a - b for a, b in zip(shared, separate, strict=True)])
            out.append(
                Finding(
                    "sharing" if arm == "shared" else "sharing_one_run",
                    f"{k} trainers sharing one pool ({how}) need fewer steps each "
                    "than with separate pools",
                    _below_zero(d),
                    f"{method}: steps each trainer needs to reach uniform's final accuracy, "
                    f"shared - separate = {d.mean:+.1f} (95 % CI ±{d.half_width:.1f}; "
                    f"separate: {mean_ci(separate).mean:.1f})",
                )
            )
    out += sharing_findings(summarize_sharing(exp))
    out += [Finding(*goal) for goal in family_goals(summarize_families(exp))]
    return out


def sharing_findings(rows: Sequence[SharingRow]) -> list[Finding]:
    """The two goals of the sharing experiment, judged on its default ("shared") arm."""
    out = []
    same = [r for r in rows if r.arm == "shared" and r.scenario == "same" and r.runs > 1]
    if same:
        out.append(
            Finding(
                "sharing_same_model",
                f"same-model runs sharing a pool need <= {SAME_MODEL_GOAL:g}x the steps of "
                "separate pools (every K)",
                all(r.ratio.mean <= SAME_MODEL_GOAL for r in same),
                "; ".join(f"K={r.runs}: {r.ratio.format(3)}" for r in same),
            )
        )
    mixed = [r for r in rows if r.arm == "shared" and r.scenario == "mixed"]
    if mixed:
        out.append(
            Finding(
                "sharing_mixed",
                "mixed-strength runs: neither group needs more steps than with its own pool",
                all(r.ratio.mean <= MIXED_GOAL for r in mixed),
                "; ".join(f"K={r.runs} {r.group}: {r.ratio.format(3)}" for r in mixed),
            )
        )
    return out

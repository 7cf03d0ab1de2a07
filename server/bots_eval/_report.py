"""The markdown report and the JSON summary of a simulation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from bots_eval._families import family_model, summarize_families
from bots_eval._methods import LAMBDA, RHO
from bots_eval._metrics import Interval
from bots_eval._runner import ARMS, Experiment
from bots_eval._sharing import REACH_FRACTION, reach_step, summarize_sharing
from bots_eval._summary import (
    FRACTIONS,
    Finding,
    TrainerSummary,
    VariantSummary,
    early_steps,
    late_steps,
)

_ARM_TEXT = {name: arm.label for name, arm in ARMS.items()}


def _pct(x: float) -> str:
    return f"{round(x * 100)} %"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def render_markdown(
    exp: Experiment,
    summaries: dict[str, VariantSummary],
    trainers: list[TrainerSummary],
    found: list[Finding],
    figures: list[str],
    command: str,
) -> str:
    """The report as markdown; ``figures`` are image paths relative to the report."""
    c = exp.config
    e, late = early_steps(c.steps), late_steps(c.steps)
    lines = [
        "# BOTS simulation report",
        "",
        f"Command: `{command}`",
        "",
        f"{c.seeds} seeds, {c.tasks} tasks, batch {c.batch_size}, {c.rollouts} rollouts per task, "
        f"{c.steps} steps; selection {'through ' + c.server if c.server else 'in-process'}; "
        f"wall time {exp.wall_seconds:.1f} s. Intervals are 95 % t-intervals over seeds. "
        f"Early = first {e} steps, late = last {late} steps.",
        "",
        "## Findings of the paper (docs/algorithm.md §6)",
        "",
    ]
    lines += _table(
        ["finding", "reproduced", "numbers"],
        [[f.claim, "yes" if f.held else "**no**", f.detail] for f in found],
    )
    methods = [s for n, s in summaries.items() if "=" not in n]
    lines += ["", "## Methods", ""]
    lines += _table(
        ["method", "ETR all", "ETR early", "ETR late", "pass>0", "pass<1", "tasks used",
         "final accuracy"],
        [
            [s.label, s.etr.format(), s.etr_early.format(), s.etr_late.format(),
             s.positive.format(), s.below_one.format(), s.coverage.format(2),
             s.final_accuracy.format()]
            for s in methods
        ],
    )  # fmt: skip
    lines += ["", "### Time to baseline and best so far, relative to uniform", ""]
    lines += _table(
        ["method", *[f"TTB({_pct(x)})" for x in FRACTIONS], *[f"BSF({_pct(x)})" for x in FRACTIONS]],
        [
            [s.label, *[s.ttb[x].format(2) for x in FRACTIONS],
             *[s.bsf[x].format(3) for x in FRACTIONS]]
            for s in methods if s.name != "uniform"
        ],
    )  # fmt: skip
    lines += [
        "",
        "TTB(x): steps to reach uniform's accuracy at x of the budget, over those steps "
        "(< 1 is faster). BSF(x): best accuracy within x of the budget over uniform's.",
        "",
        "### Estimator quality of p~ and selection cost",
        "",
    ]
    lines += _table(
        ["method", "Pearson (evaluated)", "AUC (evaluated)", "Pearson (all, truth)",
         "AUC (all, truth)", "select ms/step", "update ms/step"],
        [
            [s.label, s.pearson.format(), s.auc.format(), s.truth_pearson.format(),
             s.truth_auc.format(), s.select_ms.format(3), s.update_ms.format(3)]
            for s in methods
        ],
    )  # fmt: skip
    lines += [
        "",
        "Evaluated: p~ of each selected task at selection time against its observed pass rate "
        "(AUC for 'pass rate > 1/2'); this sample depends on what the method selects. "
        "All, truth: p~ of every task against the learner's true success probability.",
    ]
    for sweep, points in exp.sweeps.items():
        symbol = LAMBDA if sweep == "lambda" else RHO
        lines += ["", f"## Sweep over {symbol}", ""]
        lines += _table(
            [symbol, "ETR all", "ETR early", "ETR late", "TTB(100 %)", "final accuracy"],
            [
                [f"{v:g}", summaries[n].etr.format(), summaries[n].etr_early.format(),
                 summaries[n].etr_late.format(), summaries[n].ttb[1.0].format(2),
                 summaries[n].final_accuracy.format()]
                for v, n in points
            ],
        )  # fmt: skip
    if trainers:
        lines += ["", f"## {c.trainers} trainers: one shared pool vs separate pools", ""]
        lines += _table(
            ["method", "pools", "steps to uniform's final accuracy", "ETR all", "ETR early",
             "final accuracy"],
            [
                [t.method, _ARM_TEXT[t.arm], t.steps_to_target.format(1), t.etr.format(),
                 t.etr_early.format(), t.final_accuracy.format()]
                for t in trainers
            ],
        )  # fmt: skip
    lines += _sharing_section(exp)
    lines += _families_section(exp)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _sharing_section(exp: Experiment) -> list[str]:
    rows = summarize_sharing(exp)
    if not rows:
        return []
    c = exp.config
    lines = [
        "",
        "## Sharing one pool across runs (BOTS preset)",
        "",
        f"Target of a group: the mean held-out accuracy its separate-pool trainers reach after "
        f"{reach_step(c.steps)} of {c.steps} steps ({REACH_FRACTION:.0%} of the budget). Ratio: "
        "mean steps of the group's runs on the shared pool to the target over the same with "
        "separate pools, per seed (< 1: sharing saves steps). Mixed: odd-numbered runs start "
        f"+{c.head_start:g} logits stronger. Gain: final held-out accuracy, shared - separate.",
        "",
    ]
    lines += _table(
        ["runs", "K", "pool", "group", "target", "steps, separate", "steps, shared",
         "ratio", "final accuracy gain", "select ms (shared / separate)"],
        [
            [r.scenario, str(r.runs), _ARM_TEXT[r.arm], r.group, r.target.format(3),
             r.steps_separate.format(1), r.steps_shared.format(1), r.ratio.format(3),
             r.final_gain.format(4), f"{r.select_ms.mean:.3f} / {r.select_ms_separate.mean:.3f}"]
            for r in rows
        ],
    )  # fmt: skip
    return lines


def _families_section(exp: Experiment) -> list[str]:
    rows = summarize_families(exp)
    if not rows:
        return []
    c = exp.config
    model = family_model(c)
    lines = [
        "",
        "## Implicit evidence from task similarity (families world)",
        "",
        f"{c.tasks} tasks in {model.families} families (a family keeps "
        f"{model.family_spread:.0%} of the difficulty variance within it); embeddings of "
        f"dimension {model.embedding_dim} = family centroid + noise (sd "
        f"{model.embedding_noise:g}), k = {model.neighbours} neighbours. TTB: steps to reach "
        "uniform's final accuracy over uniform's steps, per seed (< 1: faster). vs BOTS: the "
        "same steps over those of BOTS with references.",
        "",
    ]
    lines += _table(
        ["method", "TTB(100 %)", "steps vs BOTS (references)", "ETR all", "final accuracy"],
        [
            [r.label, r.ttb.format(3), r.vs_bots.format(3), r.etr.format(), r.final_accuracy.format()]
            for r in rows
        ],
    )  # fmt: skip
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, Interval):
        return {
            "mean": _num(value.mean),
            "ci95": _num(value.half_width),
            "n": value.count,
            "never": value.censored,
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return _num(value)
    return value


def _num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def render_json(
    exp: Experiment,
    summaries: dict[str, VariantSummary],
    trainers: list[TrainerSummary],
    found: list[Finding],
) -> str:
    """The summary numbers as JSON (NaN and infinity become null)."""
    cfg = dataclasses.asdict(exp.config)
    data = {
        "config": _jsonable(cfg),
        "wall_seconds": exp.wall_seconds,
        "findings": _jsonable(found),
        "variants": _jsonable(summaries),
        "trainers": _jsonable(trainers),
        "sharing": _jsonable(summarize_sharing(exp)),
        "families": _jsonable(summarize_families(exp)),
        "sweeps": {k: [[v, n] for v, n in pts] for k, pts in exp.sweeps.items()},
    }
    return json.dumps(data, indent=2, ensure_ascii=False)

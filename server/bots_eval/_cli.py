"""Command line of the simulation: ``python -m bots_eval`` (wired as ``bots simulate``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import grpc

from bots_eval._experiment import run_experiment
from bots_eval._methods import METHOD_NAMES
from bots_eval._plots import plots_available, write_plots
from bots_eval._report import render_json, render_markdown
from bots_eval._runner import DEFAULT_SWEEPS, SWEEPS, Experiment, SimConfig
from bots_eval._summary import findings as check_findings
from bots_eval._summary import summarize, summarize_trainers

DEFAULT_OUT = "bots-sim"
# --quick: a smoke-test size that still shows every effect (about 20 s on 2 cores).
QUICK = {"tasks": 1024, "batch_size": 32, "steps": 120, "seeds": 3}


def _names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in known]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})"
        )
    return names


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("numbers of runs must be >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the simulation command."""
    p = argparse.ArgumentParser(
        prog="bots simulate",
        description=(
            "Simulate RL finetuning with a simulated learner and compare task-selection "
            "methods through the real BOTS engine; writes PNG figures, report.md and "
            "results.json."
        ),
    )
    p.add_argument("--seeds", type=int, help="number of seeds (default 5)")
    p.add_argument("--steps", type=int, help="training steps per trainer (default 300)")
    p.add_argument("--tasks", type=int, help="tasks in the pool (default 4096)")
    p.add_argument("--batch-size", type=int, help="tasks per step (default 64)")
    p.add_argument("--rollouts", type=int, help="rollouts per task (default 16)")
    p.add_argument(
        "--methods",
        type=lambda s: _names(s, METHOD_NAMES, "methods"),
        help=f"comma-separated methods (default all: {','.join(METHOD_NAMES)})",
    )
    p.add_argument(
        "--sweep",
        type=lambda s: _names(s, SWEEPS, "sweeps"),
        help=f"comma-separated sweeps to run, or 'none' (default {','.join(DEFAULT_SWEEPS)})",
    )
    p.add_argument("--trainers", type=int, help="trainers K sharing a pool (default 4)")
    p.add_argument(
        "--sharing-runs",
        type=_counts,
        help="comma-separated numbers of runs K of the sharing sweep (default 1,2,4,8)",
    )
    p.add_argument(
        "--head-start",
        type=float,
        help="how much stronger (logits) the strong runs of the sharing sweep start (default 2)",
    )
    p.add_argument(
        "--family-size",
        type=int,
        help="tasks per family in the world of the similarity sweep (default 16)",
    )
    p.add_argument(
        "--server",
        metavar="ADDR",
        help="select through the BOTS gRPC server at ADDR (host:port) instead of in-process",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small configuration for a quick look (1024 tasks, batch 32, 120 steps, 3 seeds)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The simulation config the parsed arguments ask for."""
    values: dict[str, object] = dict(QUICK) if args.quick else {}
    for field in ("seeds", "steps", "tasks", "batch_size", "rollouts", "trainers", "server",
                  "sharing_runs", "head_start", "family_size"):  # fmt: skip
        value = getattr(args, field)
        if value is not None:
            values[field] = value
    if args.methods is not None:
        values["methods"] = args.methods
    if args.sweep is not None:
        values["sweeps"] = args.sweep
    return SimConfig(**values)  # type: ignore[arg-type]


def write_outputs(exp: Experiment, out: Path, command: str, *, plots: bool = True) -> list[Path]:
    """Writes figures, report.md and results.json into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(exp)
    trainers = summarize_trainers(exp)
    found = check_findings(exp)
    figures = write_plots(exp, summaries, out) if plots else []
    report = out / "report.md"
    report.write_text(
        render_markdown(exp, summaries, trainers, found, [f.name for f in figures], command),
        encoding="utf-8",
    )
    results = out / "results.json"
    results.write_text(render_json(exp, summaries, trainers, found), encoding="utf-8")
    return [*figures, report, results]


def main(argv: list[str] | None = None) -> int:
    """Runs the simulation command.

    Args:
        argv: Arguments (without the program name); ``sys.argv[1:]`` when None.

    Returns:
        The exit code: 0 on success, 1 when the server cannot be used, 2 for
        bad arguments.
    """
    parser = build_parser()
    raw = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(raw)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"bots simulate: error: {exc}", file=sys.stderr)
        return 2
    plots = not args.no_plots
    if plots and not plots_available():
        print(
            "bots simulate: matplotlib is not installed (pip install 'bots-selector[eval]'); "
            "writing the report without figures",
            file=sys.stderr,
        )
        plots = False
    try:
        exp = run_experiment(cfg, progress=False if args.quiet else None)
    except grpc.RpcError as exc:
        code, details = (exc.code(), exc.details()) if isinstance(exc, grpc.Call) else (None, "")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            print(f"bots simulate: cannot reach a server at {cfg.server} ({code})", file=sys.stderr)
        else:
            print(f"bots simulate: server error: {code}: {details}", file=sys.stderr)
        return 1
    command = shlex.join(["bots", "simulate", *raw])
    paths = write_outputs(exp, Path(args.out), command, plots=plots)
    for f in check_findings(exp):
        print(f"[{'held' if f.held else 'NOT held'}] {f.claim}: {f.detail}")
    print(f"wall time {exp.wall_seconds:.1f} s; wrote {len(paths)} files to {args.out}")
    return 0

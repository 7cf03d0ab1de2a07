"""`bots refs measure` and `bots refs merge`: reference pass rates for `bots pool create`."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from bots_refs._backends import BACKENDS, Sampling
from bots_refs._bar import format_rate
from bots_refs._measure import MeasureSummary, default_out, measure
from bots_refs._tasks import REFERENCE_COLUMNS, merge_results, write_result_file


def cmd_measure(args: argparse.Namespace) -> int:
    sampling = Sampling(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    summary = measure(
        args.tasks,
        model=args.model,
        reward=args.reward,
        column=args.column,
        out=args.out or default_out(args.tasks, args.column),
        sampling=sampling,
        backend=args.backend,
        chat=args.chat,
        batch_size=args.batch_size,
        progress_file=args.progress_file,
        device=args.device,
        dtype=args.dtype,
        show_progress=True if args.progress else None,
    )
    if args.json:
        print(json.dumps(_summary_json(summary), indent=2, allow_nan=False))
    else:
        print(_summary_line(summary))
    return 0


def _summary_json(s: MeasureSummary) -> dict[str, Any]:
    return {
        "out": s.out,
        "progress_file": s.progress_file,
        "column": s.column,
        "tasks": s.tasks,
        "measured": s.measured,
        "resumed": s.resumed,
        "mean_rate": None if math.isnan(s.mean_rate) else s.mean_rate,
        "at_zero": s.at_zero,
        "at_one": s.at_one,
        "seconds": s.seconds,
        "tasks_per_second": s.tasks_per_second,
    }


def _summary_line(s: MeasureSummary) -> str:
    speed = f" at {format_rate(s.tasks_per_second)} tasks/s" if s.measured else ""
    return (
        f"{s.out}: {s.column} for {s.tasks} tasks ({s.measured} measured now{speed}, "
        f"{s.resumed} from {s.progress_file}); mean {s.mean_rate:.3f}, "
        f"{s.at_zero} never solved, {s.at_one} always solved"
    )


def cmd_merge(args: argparse.Namespace) -> int:
    rows = merge_results(args.files)
    write_result_file(args.out, rows)
    print(f"{args.out}: {len(rows)} tasks from {len(args.files)} files")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(sub: Any) -> None:
    """Adds `refs` and its actions to the `bots` subparsers ``sub``."""
    refs = sub.add_parser(
        "refs", help="measure reference pass rates (weak/strong columns) of a model on a task file"
    )
    actions = refs.add_subparsers(dest="refs_command", required=True, metavar="ACTION")

    p = actions.add_parser(
        "measure",
        help="sample each task's prompt n times, score with a reward, write the pass rates",
        description="Writes KEY + the pass rate column for `bots pool create`; resumable: "
        "finished tasks go to a progress file, and a rerun continues where a run stopped.",
    )
    p.add_argument("tasks", metavar="TASKS", help="JSONL or CSV: key, prompt, answer, ...")
    p.add_argument("--model", required=True, help="model directory (or hub name)")
    p.add_argument(
        "--reward",
        required=True,
        help="exact_match, numeric, or module:callable called as f(completion, **fields)",
    )
    p.add_argument(
        "--column", required=True, choices=REFERENCE_COLUMNS, help="column for the pass rates"
    )
    p.add_argument("--out", metavar="FILE", help="result file (default TASKS.COLUMN.jsonl)")
    p.add_argument("-n", "--n", type=_positive_int, default=8, help="rollouts per task (8)")
    p.add_argument("--seed", type=int, default=0, help="base seed (0)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument(
        "--max-new-tokens", type=_positive_int, default=256, help="longest completion (256)"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="transformers",
        help="generation backend (transformers)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="tasks per generation call (transformers 8, vllm 256)",
    )
    p.add_argument("--device", default="cpu", help="torch device for transformers (cpu)")
    p.add_argument("--dtype", help="model dtype, e.g. bfloat16 (default: the model's)")
    p.add_argument("--chat", action="store_true", help="apply the chat template to text prompts")
    p.add_argument(
        "--progress-file", metavar="FILE", help="default OUT.progress.jsonl, beside the result"
    )
    p.add_argument("--progress", action="store_true", help="show progress even off a terminal")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_measure)

    p = actions.add_parser(
        "merge",
        help="join result files by key (weak from one run, strong from another)",
        description="Writes one task file for `bots pool create`; every task needs both "
        "weak and strong (or neither), and files may not disagree on a value.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="result files (JSONL or CSV)")
    p.add_argument("--out", required=True, metavar="FILE", help="merged task file")
    p.set_defaults(func=cmd_merge)

"""Measuring a model's pass rate on every task of a task file, resumably."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bots_refs._backends import Backend, Sampling, derive_seed, load_tokenizer, make_backend
from bots_refs._bar import EtaProgress
from bots_refs._errors import RefsError, shorten
from bots_refs._progress_file import ProgressFile, TaskResult
from bots_refs._rewards import RewardFn, load_reward, score
from bots_refs._tasks import REFERENCE_COLUMNS, RefTask, read_task_file, write_result_file


@dataclass(frozen=True)
class MeasureSummary:
    """What a `measure` call did.

    Attributes:
        out: The result file written.
        progress_file: The progress file (kept: rerunning with it costs nothing).
        column: ``weak`` or ``strong``.
        tasks: Tasks in the result file.
        measured: Tasks sampled by this call.
        resumed: Tasks taken from the progress file of an earlier run.
        mean_rate: Mean pass rate over all tasks.
        at_zero: Tasks that no rollout solved.
        at_one: Tasks that every rollout solved.
        seconds: Time spent sampling and scoring in this call (model loading excluded).
        rates: The pass rate of each task, in task-file order.
    """

    out: str
    progress_file: str
    column: str
    tasks: int
    measured: int
    resumed: int
    mean_rate: float
    at_zero: int
    at_one: int
    seconds: float
    rates: dict[str, float]

    @property
    def tasks_per_second(self) -> float:
        """Tasks measured per second of sampling and scoring (0 when nothing was measured)."""
        return self.measured / self.seconds if self.measured and self.seconds > 0 else 0.0


def default_out(tasks_path: str, column: str) -> str:
    """``tasks.jsonl`` -> ``tasks.weak.jsonl`` (the result file beside the task file)."""
    stem = os.path.splitext(tasks_path)[0]
    return f"{stem}.{column}.jsonl"


def default_progress_file(out: str) -> str:
    """The progress file beside the result file ``out``."""
    return f"{out}.progress.jsonl"


def reward_name(reward: str | RewardFn) -> str:
    """How a reward is recorded in the progress file's settings."""
    if isinstance(reward, str):
        return reward
    # A callable object has no __qualname__ of its own: its class names it.
    name = getattr(reward, "__qualname__", None) or type(reward).__qualname__
    return f"{getattr(reward, '__module__', '?')}:{name}"


def encode_prompt(tokenizer: Any, task: RefTask, *, chat: bool) -> list[int]:
    """The token ids the model continues: the text itself, or a chat template rendered.

    A prompt given as messages always goes through the chat template; a text
    prompt does when ``chat`` is set (as the user message).

    Raises:
        RefsError: The template is needed but the tokenizer has none, or the
            prompt encodes to no tokens.
    """
    prompt = task.prompt
    if isinstance(prompt, list) or chat:
        if not getattr(tokenizer, "chat_template", None):
            raise RefsError(
                f"task {shorten(task.key)}: a chat prompt needs a chat template, "
                "and the model's tokenizer has none"
            )
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise RefsError(f"task {shorten(task.key)}: the prompt encodes to no tokens")
    return [int(i) for i in ids]


def measure(
    tasks: str | Sequence[RefTask],
    *,
    model: str,
    reward: str | RewardFn,
    column: str,
    out: str | None = None,
    sampling: Sampling | None = None,
    backend: str | Backend = "transformers",
    tokenizer: Any = None,
    chat: bool = False,
    batch_size: int | None = None,
    progress_file: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    show_progress: bool | None = None,
) -> MeasureSummary:
    """Samples ``sampling.n`` completions per task, scores them, writes the pass rates.

    Finished tasks are appended to the progress file as they finish; calling
    again with the same settings goes on where an interrupted call stopped,
    and gives the rates an uninterrupted call would have (each task's
    sampling is seeded from ``sampling.seed`` and its key).

    Args:
        tasks: A task file (JSONL or CSV with ``key`` and ``prompt``) or its tasks.
        model: A local model directory or a hub name.
        reward: ``exact_match``, ``numeric``, ``module:callable``, or a callable
            ``reward(completion, **fields) -> float`` in [0, 1].
        column: ``weak`` or ``strong``: the result file's column for the rates.
        out: The result file; default ``<tasks>.<column>.jsonl``.
        sampling: Rollouts per task, temperature, top-p, length, seed.
        backend: ``transformers``, ``vllm``, or a `Backend` object.
        tokenizer: The model's tokenizer; loaded from ``model`` when None.
        chat: Render text prompts with the tokenizer's chat template.
        batch_size: Tasks per generation call (default: the backend's).
        progress_file: Default ``<out>.progress.jsonl``.
        device: torch device of the transformers backend.
        dtype: Model dtype (``bfloat16``, ...); None keeps the model's.
        show_progress: Draw a progress bar on stderr; None: when stderr is a terminal.

    Raises:
        RefsError: Bad settings or files, a reward function that fails (naming
            the task), a progress file made with other settings.
    """
    if column not in REFERENCE_COLUMNS:
        raise RefsError(f"column must be {' or '.join(REFERENCE_COLUMNS)}, got {column!r}")
    sampling = sampling or Sampling()
    model = os.path.expanduser(model)
    if isinstance(tasks, str):
        out = out or default_out(tasks, column)
        path, tasks = tasks, read_task_file(tasks)
        if not tasks:
            raise RefsError(f"{path}: no tasks")
    elif out is None:
        raise RefsError("out is needed when tasks are not a file")
    reward_fn = load_reward(reward) if isinstance(reward, str) else reward
    backend_name = backend if isinstance(backend, str) else backend.name
    settings = {
        "model": os.path.abspath(model) if os.path.isdir(model) else model,
        "reward": reward_name(reward),
        "backend": backend_name,
        "chat": chat,
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
        "dtype": dtype,
    }
    progress_path = progress_file or default_progress_file(out)
    journal = ProgressFile(progress_path, settings)
    done = journal.load()
    keys = {t.key for t in tasks}
    resumed = sum(1 for k in done if k in keys)
    todo = [t for t in tasks if t.key not in done]
    seconds = 0.0
    if todo:
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
        encoded = {t.key: encode_prompt(tokenizer, t, chat=chat) for t in todo}
        if isinstance(backend, str):
            backend = make_backend(
                backend, model, tokenizer, device=device, dtype=dtype, init_seed=sampling.seed
            )
        size = batch_size or backend.default_batch_size
        if size < 1:
            raise RefsError(f"batch_size must be >= 1, got {size}")
        start = time.monotonic()
        with journal, EtaProgress(column, len(todo), enabled=show_progress) as bar:
            # Batches are cut from the whole task list, so a resumed run batches
            # its tasks as the first run did.
            for first in range(0, len(tasks), size):
                batch = [t for t in tasks[first : first + size] if t.key not in done]
                if not batch:
                    continue
                completions = backend.generate(
                    [encoded[t.key] for t in batch],
                    [derive_seed(sampling.seed, t.key) for t in batch],
                    sampling,
                )
                for task, ids in zip(batch, completions, strict=True):
                    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in ids]
                    rewards = tuple(score(reward_fn, task.key, c, task.fields) for c in texts)
                    result = TaskResult(key=task.key, rewards=rewards)
                    journal.append([result])
                    done[task.key] = result
                    bar.update(1)
                journal.sync()
        seconds = time.monotonic() - start
    rows = [(t.key, {**t.columns, column: done[t.key].rate}) for t in tasks]
    write_result_file(out, rows)
    rates = {t.key: done[t.key].rate for t in tasks}
    values = list(rates.values())
    return MeasureSummary(
        out=out,
        progress_file=progress_path,
        column=column,
        tasks=len(tasks),
        measured=len(todo),
        resumed=resumed,
        mean_rate=sum(values) / len(values) if values else float("nan"),
        at_zero=sum(1 for v in values if v == 0.0),
        at_one=sum(1 for v in values if v == 1.0),
        seconds=seconds,
        rates=rates,
    )

"""bots_refs: reference pass rates of a model on a task file, for BOTS's implicit evidence.

`measure` samples every task's prompt n times (transformers or vLLM),
scores the completions with a reward function and writes the mean reward per
task as the ``weak`` or ``strong`` column of a task file; `merge_results`
joins a weak and a strong run into what `bots pool create` reads. The CLI is
`bots refs measure` and `bots refs merge` (docs/refs.md).
"""

from __future__ import annotations

from bots_refs._backends import (
    Backend,
    Sampling,
    TransformersBackend,
    VllmBackend,
    derive_seed,
    load_tokenizer,
)
from bots_refs._errors import (
    ProgressFileError,
    RefsError,
    RewardError,
    RewardSpecError,
    TaskFileError,
)
from bots_refs._measure import MeasureSummary, measure
from bots_refs._progress_file import TaskResult
from bots_refs._rewards import exact_match, last_number, load_reward, numeric
from bots_refs._tasks import (
    RefTask,
    merge_results,
    read_result_file,
    read_task_file,
    write_result_file,
)

__all__ = [
    "Backend",
    "MeasureSummary",
    "ProgressFileError",
    "RefTask",
    "RefsError",
    "RewardError",
    "RewardSpecError",
    "Sampling",
    "TaskFileError",
    "TaskResult",
    "TransformersBackend",
    "VllmBackend",
    "derive_seed",
    "exact_match",
    "last_number",
    "load_reward",
    "load_tokenizer",
    "measure",
    "merge_results",
    "numeric",
    "read_result_file",
    "read_task_file",
    "write_result_file",
]

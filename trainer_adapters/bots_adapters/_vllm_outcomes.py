"""vLLM ``LLM.generate`` results (n samples per prompt) plus task keys and a reward function -> outcomes.

Only attribute access is used (``RequestOutput.outputs``, ``CompletionOutput.text``),
so this module imports nothing from vLLM and runs wherever the client runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from bots_client import Outcome

from bots_adapters._outcomes import RewardMode, group_rewards

RewardFn = Callable[..., "float | None"]
"""``reward_fn(task_key, text)`` or ``reward_fn(task_key, text, completion, request)``."""


def _wants_objects(reward_fn: RewardFn) -> bool:
    try:
        params = inspect.signature(reward_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind is p.VAR_POSITIONAL for p in params)


def rollout_rewards(
    outputs: Sequence[Any], task_keys: Sequence[str], reward_fn: RewardFn
) -> tuple[list[str], list[float]]:
    """Scores every sample: one (task key, reward) per ``CompletionOutput``.

    Args:
        outputs: ``LLM.generate`` results, one ``RequestOutput`` per prompt.
        task_keys: The task key of each prompt, same order as ``outputs``.
            The same key may appear several times (a prompt sent more than once).
        reward_fn: Called per sample as ``reward_fn(key, text)``, or with two
            more arguments (the ``CompletionOutput`` and its ``RequestOutput``)
            when it takes four; None means "not scored" (skipped).

    Returns:
        Flat lists of task keys and rewards, one entry per sample.

    Raises:
        ValueError: ``outputs`` and ``task_keys`` differ in length.
    """
    if len(outputs) != len(task_keys):
        raise ValueError(f"got {len(outputs)} request outputs but {len(task_keys)} task keys")
    full = _wants_objects(reward_fn)
    keys: list[str] = []
    rewards: list[float] = []
    for request, key in zip(outputs, task_keys):
        for completion in request.outputs:
            r = (
                reward_fn(key, completion.text, completion, request)
                if full
                else reward_fn(key, completion.text)
            )
            keys.append(key)
            rewards.append(float("nan") if r is None else float(r))
    return keys, rewards


def outcomes_from_outputs(
    outputs: Sequence[Any],
    task_keys: Sequence[str],
    reward_fn: RewardFn,
    *,
    mode: RewardMode | str = RewardMode.BINARY,
    threshold: float = 0.5,
) -> list[Outcome]:
    """One `Outcome` per task from ``LLM.generate`` results (see `rollout_rewards`, `group_rewards`)."""
    keys, rewards = rollout_rewards(outputs, task_keys, reward_fn)
    return group_rewards(keys, rewards, mode=mode, threshold=threshold)

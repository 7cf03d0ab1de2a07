"""Per-rollout rewards grouped by task into BOTS evidence (successes, trials); no framework needed."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence

from bots_client import Outcome


class RewardMode(str, enum.Enum):
    """How one rollout's reward becomes evidence.

    BINARY: rewards must be exactly 0 or 1 (bools allowed); one success per 1.
    THRESHOLD: a rollout succeeds when its reward is >= the threshold.
    FRACTION: graded rewards in [0, 1] count as fractional successes
        (docs/algorithm.md §2: successes = sum of rewards).
    """

    BINARY = "binary"
    THRESHOLD = "threshold"
    FRACTION = "fraction"


def _mode(mode: RewardMode | str) -> RewardMode:
    try:
        return RewardMode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in RewardMode)
        raise ValueError(f"reward mode must be one of {choices}, got {mode!r}") from None


def success_value(reward: float, mode: RewardMode | str, threshold: float = 0.5) -> float:
    """The success credit of one rollout's reward under ``mode``.

    Args:
        reward: The rollout's reward.
        mode: How rewards become evidence.
        threshold: Success threshold for `RewardMode.THRESHOLD`.

    Returns:
        A number in [0, 1].

    Raises:
        ValueError: For a non-finite reward, a non-0/1 reward in BINARY mode,
            or a reward outside [0, 1] in FRACTION mode.
    """
    m = _mode(mode)
    r = float(reward)
    if not math.isfinite(r):
        raise ValueError(f"reward must be finite, got {reward!r}")
    if m is RewardMode.BINARY:
        if r not in (0.0, 1.0):
            raise ValueError(
                f"binary rewards must be 0 or 1, got {reward!r}; use mode='threshold' or "
                "mode='fraction' for graded rewards"
            )
        return r
    if m is RewardMode.THRESHOLD:
        return 1.0 if r >= threshold else 0.0
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"fractional rewards must lie in [0, 1], got {reward!r}")
    return r


def group_rewards(
    task_keys: Sequence[str],
    rewards: Sequence[float] | Iterable[float],
    *,
    mode: RewardMode | str = RewardMode.BINARY,
    threshold: float = 0.5,
) -> list[Outcome]:
    """Groups per-rollout rewards by task into one `Outcome` per task.

    ``task_keys[i]`` is the task of rollout ``i`` and ``rewards[i]`` its
    reward, in any order (a task's rollouts need not be adjacent). Rollouts
    whose reward is None or NaN are skipped (not evaluated, never failures).

    Args:
        task_keys: The task key of each rollout.
        rewards: The reward of each rollout, same length.
        mode: How a reward becomes evidence (see `RewardMode`).
        threshold: Success threshold for THRESHOLD mode.

    Returns:
        Outcomes in order of each task's first rollout; tasks whose every
        rollout was skipped are left out.

    Raises:
        ValueError: Different lengths or an invalid reward for ``mode``.
    """
    m = _mode(mode)
    values = list(rewards)
    if len(values) != len(task_keys):
        raise ValueError(f"got {len(task_keys)} task keys but {len(values)} rewards")
    successes: dict[str, float] = {}
    trials: dict[str, float] = {}
    for key, reward in zip(task_keys, values):
        if reward is None or (isinstance(reward, float) and math.isnan(reward)):
            continue
        credit = success_value(reward, m, threshold)
        successes[key] = successes.get(key, 0.0) + credit
        trials[key] = trials.get(key, 0.0) + 1.0
    # Fractional sums can exceed the trial count by rounding; the server rejects s > t.
    return [Outcome(k, min(successes[k], trials[k]), trials[k]) for k in successes]


def group_by_task(
    rewards_by_task: Iterable[tuple[str, Sequence[float]]],
    *,
    mode: RewardMode | str = RewardMode.BINARY,
    threshold: float = 0.5,
) -> list[Outcome]:
    """Like `group_rewards`, for rewards already grouped as (task key, rewards of its rollouts)."""
    keys: list[str] = []
    flat: list[float] = []
    for key, values in rewards_by_task:
        for v in values:
            keys.append(key)
            flat.append(v)
    return group_rewards(keys, flat, mode=mode, threshold=threshold)


def effective_task_ratio(outcomes: Iterable[Outcome]) -> float:
    """Share of tasks whose pass rate is strictly between 0 and 1 (docs/algorithm.md §6); NaN for none."""
    rates = [o.successes / o.trials for o in outcomes if o.trials > 0]
    if not rates:
        return math.nan
    return sum(1 for r in rates if 0.0 < r < 1.0) / len(rates)

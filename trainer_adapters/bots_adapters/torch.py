"""PyTorch glue: `BotsBatchSampler` for ``DataLoader(batch_sampler=...)`` and the `OutcomeReporter`.

Needs the ``torch`` extra. Example::

    sampler = BotsBatchSampler(client, "arith", keys, batch_size=32, run_id="run-1",
                               expected_trials=8)
    loader = DataLoader(dataset, batch_sampler=sampler)
    with OutcomeReporter(client, "arith") as reporter:
        for batch in loader:
            rewards = rollouts(batch)       # 8 per task
            reporter.report_rewards(task_keys, rewards,
                                    selection_id=sampler.current_selection.selection_id)
"""

from __future__ import annotations

from bots_adapters._outcomes import RewardMode, group_rewards
from bots_adapters._reporter import (
    OutcomeReporter,
    ReportFailedError,
    ReportQueueFull,
)
from bots_adapters._spool import SpoolFullError
from bots_adapters._torch_sampler import BotsBatchSampler, KeyIndex, is_local, local_selection

__all__ = [
    "BotsBatchSampler",
    "KeyIndex",
    "OutcomeReporter",
    "ReportFailedError",
    "ReportQueueFull",
    "RewardMode",
    "SpoolFullError",
    "group_rewards",
    "is_local",
    "local_selection",
]

"""Thin adapters between RL trainers and the BOTS selection service.

This package imports no framework. Framework glue lives in submodules, each
needing its own extra and importing its framework only when imported itself:

    bots_adapters.torch     BotsBatchSampler (DataLoader), OutcomeReporter
    bots_adapters.vllm      outcomes from vLLM ``RequestOutput`` lists
    bots_adapters.trl       BotsGRPOTrainer, BotsRepeatSampler, BotsRewardReporter
    bots_adapters.verl      BotsRayPPOTrainer, a dataloader sampler for verl
    bots_adapters.trinity   BotsSelector, usable from a Trinity-RFT config

The names below need only ``bots_client``.
"""

from __future__ import annotations

from bots_adapters._ledger import SelectionLedger
from bots_adapters._outcomes import (
    RewardMode,
    effective_task_ratio,
    group_by_task,
    group_rewards,
    success_value,
)
from bots_adapters._reporter import (
    OutcomeReporter,
    PendingReport,
    ReporterStats,
    ReportFailedError,
    ReportQueueFull,
)
from bots_adapters._spool import ReportSpool, SpooledReport, SpoolFullError

__all__ = [
    "OutcomeReporter",
    "PendingReport",
    "ReportFailedError",
    "ReportQueueFull",
    "ReportSpool",
    "ReporterStats",
    "RewardMode",
    "SelectionLedger",
    "SpoolFullError",
    "SpooledReport",
    "effective_task_ratio",
    "group_by_task",
    "group_rewards",
    "success_value",
]

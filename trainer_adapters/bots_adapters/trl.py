"""TRL glue: `BotsGRPOTrainer`, `BotsRepeatSampler` and `BotsRewardReporter`.

Needs the ``trl`` extra. ``BotsGRPOTrainer`` is ``trl.GRPOTrainer`` with its
train sampler replaced by BOTS selections and one reward function reporting
per-task outcomes to the service (each rank its own share).
"""

from __future__ import annotations

from bots_adapters._trl_trainer import BotsGRPOTrainer, BotsRepeatSampler, BotsRewardReporter

__all__ = ["BotsGRPOTrainer", "BotsRepeatSampler", "BotsRewardReporter"]

"""verl glue: `BotsSampler` (pass as ``RayPPOTrainer(train_sampler=...)``) and `BotsRayPPOTrainer`.

Needs the ``verl`` extra (verl >= 0.8, whose trainer has no sampler plug-in in
its config: the sampler is given to the trainer, and the trainer subclass
reports each step's per-prompt rewards before the actor update).
"""

from __future__ import annotations

from bots_adapters._verl_trainer import (
    BotsRayPPOTrainer,
    BotsSampler,
    default_task_key,
    split_by_selection,
)

__all__ = ["BotsRayPPOTrainer", "BotsSampler", "default_task_key", "split_by_selection"]

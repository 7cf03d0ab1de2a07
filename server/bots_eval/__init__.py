"""bots_eval: a simulated RFT learner that compares task-selection methods through the BOTS engine."""

from __future__ import annotations

from bots_eval._backend import EngineBackend, GrpcBackend, PoolBackend
from bots_eval._cli import build_parser, main, write_outputs
from bots_eval._learner import Learner, LearnerModel, World, make_world
from bots_eval._methods import METHOD_NAMES, METHODS, Method
from bots_eval._metrics import (
    Interval,
    StepRatios,
    best_so_far_ratio,
    effective_task_ratio,
    mean_ci,
    pearson,
    roc_auc,
    step_ratios,
    steps_to_reach,
    time_to_baseline,
)
from bots_eval._runner import (
    SWEEPS,
    TRAINER_ARMS,
    Experiment,
    RunResult,
    SimConfig,
    TrainerGroupResult,
    run_experiment,
    run_single,
    run_trainers,
)
from bots_eval._summary import (
    Finding,
    TrainerSummary,
    VariantSummary,
    findings,
    summarize,
    summarize_trainers,
)

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "SWEEPS",
    "TRAINER_ARMS",
    "EngineBackend",
    "Experiment",
    "Finding",
    "GrpcBackend",
    "Interval",
    "Learner",
    "LearnerModel",
    "Method",
    "PoolBackend",
    "RunResult",
    "SimConfig",
    "StepRatios",
    "TrainerGroupResult",
    "TrainerSummary",
    "VariantSummary",
    "World",
    "best_so_far_ratio",
    "build_parser",
    "effective_task_ratio",
    "findings",
    "main",
    "make_world",
    "mean_ci",
    "pearson",
    "roc_auc",
    "run_experiment",
    "run_single",
    "run_trainers",
    "step_ratios",
    "steps_to_reach",
    "summarize",
    "summarize_trainers",
    "time_to_baseline",
    "write_outputs",
]

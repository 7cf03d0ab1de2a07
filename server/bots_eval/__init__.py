"""bots_eval: a simulated RFT learner that compares task-selection methods through the BOTS engine."""

from __future__ import annotations

from bots_eval._backend import EngineBackend, GrpcBackend, PoolBackend
from bots_eval._cli import build_parser, main, write_outputs
from bots_eval._experiment import run_experiment
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
    ARMS,
    SWEEPS,
    TRAINER_ARMS,
    Arm,
    Experiment,
    RunResult,
    SimConfig,
    TrainerGroupResult,
    run_group,
    run_single,
    run_trainers,
)
from bots_eval._sharing import SCENARIOS, SharingRow, summarize_sharing
from bots_eval._summary import (
    Finding,
    TrainerSummary,
    VariantSummary,
    findings,
    summarize,
    summarize_trainers,
)

__all__ = [
    "ARMS",
    "METHODS",
    "METHOD_NAMES",
    "SCENARIOS",
    "SWEEPS",
    "TRAINER_ARMS",
    "Arm",
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
    "SharingRow",
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
    "run_group",
    "run_single",
    "run_trainers",
    "step_ratios",
    "steps_to_reach",
    "summarize",
    "summarize_sharing",
    "summarize_trainers",
    "time_to_baseline",
    "write_outputs",
]

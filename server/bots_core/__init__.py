"""bots_core: the BOTS algorithm over numpy arrays (no I/O)."""

from __future__ import annotations

from bots_core._config import PRESETS, EstimatorKind, PoolConfig, SelectionMode, preset
from bots_core._diagnostics import QUALITY_WINDOW, RATIO_WINDOW, Diagnostics
from bots_core._embeddings import (
    MAX_EMBEDDING_DIM,
    STORED_DIM,
    EmbeddingBasis,
    check_embeddings,
)
from bots_core._errors import (
    BotsCoreError,
    CorruptStateError,
    InvalidInputError,
    TaskConflictError,
    UnknownTaskError,
    shorten,
)
from bots_core._keys import KeyIndex, KeyTable
from bots_core._pool_estimator import (
    PoolEstimator,
    check_graph_size,
    estimator_at,
    graph_of_codes,
    needs_estimator,
    restore,
)
from bots_core._runs import ACTIVE_STEPS, RunState, run_offset, sharing
from bots_core._select import (
    Selection,
    beta_draws,
    seed_sequence,
    select_batch,
    top_k,
    warm_up_kernel,
)
from bots_core._similarity import EstimatorState, complete_state
from bots_core._state import ETR_WINDOW, MAX_KEY_BYTES, Lazy, PoolState, TaskSpec
from bots_core._update import (
    DEFAULT_ESTIMATOR,
    MAX_TRIALS,
    Evidence,
    ImplicitEstimator,
    InterpolationEstimator,
    StepResult,
    aggregate,
    apply_step,
    batch_capability,
    check_counts,
)

__all__ = [
    "ACTIVE_STEPS",
    "DEFAULT_ESTIMATOR",
    "ETR_WINDOW",
    "MAX_EMBEDDING_DIM",
    "MAX_KEY_BYTES",
    "MAX_TRIALS",
    "PRESETS",
    "QUALITY_WINDOW",
    "RATIO_WINDOW",
    "STORED_DIM",
    "BotsCoreError",
    "CorruptStateError",
    "Diagnostics",
    "EmbeddingBasis",
    "EstimatorKind",
    "EstimatorState",
    "Evidence",
    "ImplicitEstimator",
    "InterpolationEstimator",
    "InvalidInputError",
    "KeyIndex",
    "KeyTable",
    "Lazy",
    "PoolConfig",
    "PoolEstimator",
    "PoolState",
    "RunState",
    "Selection",
    "SelectionMode",
    "StepResult",
    "TaskConflictError",
    "TaskSpec",
    "UnknownTaskError",
    "aggregate",
    "apply_step",
    "batch_capability",
    "beta_draws",
    "check_counts",
    "check_embeddings",
    "check_graph_size",
    "complete_state",
    "estimator_at",
    "graph_of_codes",
    "needs_estimator",
    "preset",
    "restore",
    "run_offset",
    "seed_sequence",
    "select_batch",
    "sharing",
    "shorten",
    "top_k",
    "warm_up_kernel",
]

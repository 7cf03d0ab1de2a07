"""Frozen dataclasses and enums the client takes and returns (never protobuf messages)."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from bots_client._errors import InvalidRequestError


class SelectionMode(str, enum.Enum):
    """How a batch is chosen from the posteriors (docs/algorithm.md §4)."""

    THOMPSON = "thompson"
    GREEDY = "greedy"
    SOFTMAX = "softmax"
    UNIFORM = "uniform"


class EstimatorKind(str, enum.Enum):
    """Where implicit evidence comes from (docs/similarity.md)."""

    INTERPOLATION = "interpolation"
    SIMILARITY = "similarity"
    BOTH = "both"


class SelectionState(str, enum.Enum):
    """Where a selection stands after a report."""

    UNSPECIFIED = "unspecified"
    """Standalone report: no selection involved."""
    OPEN = "open"
    """Waiting for more reports."""
    APPLIED = "applied"
    """Closed and its update applied."""
    DISCARDED = "discarded"
    """Closed with no evidence at all: nothing was applied."""


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Hyper-parameters of a pool; None means "the preset's value".

    Returned configs (in `PoolInfo` and `PoolHeader`) are the effective ones,
    with every field set.

    Attributes:
        forgetting: Forgetting rate lambda in [0, 1].
        implicit_weight: Weight rho in [0, 1] of implicit evidence.
        pseudo_rollouts: Pseudo-rollout count n > 0; also the trials a selected
            task is expected to report by default.
        target: Target success probability p* in [0, 1].
        momentum: Momentum gamma in [0, 1) of the capability coefficient.
        mode: Selection rule.
        temperature: Softmax temperature tau > 0 (SOFTMAX only).
        seed: Seed of the pool's random generators.
        selection_wait_seconds: Seconds an open selection waits for reports.
        min_reference_gap: Smallest |mean strong - mean weak| of a batch for
            which a new capability coefficient is computed.
        estimator: Source of implicit evidence.
    """

    forgetting: float | None = None
    implicit_weight: float | None = None
    pseudo_rollouts: float | None = None
    target: float | None = None
    momentum: float | None = None
    mode: SelectionMode | None = None
    temperature: float | None = None
    seed: int | None = None
    selection_wait_seconds: float | None = None
    min_reference_gap: float | None = None
    estimator: EstimatorKind | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready values (mode as its lowercase name)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PoolConfig:
        """Builds a config from a mapping, converting strings where needed.

        Accepts what `to_dict` writes as well as strings such as those given
        on a command line (``"0.2"``, ``"thompson"``); None values stay unset.

        Args:
            values: Field name to value.

        Returns:
            The config.

        Raises:
            InvalidRequestError: For an unknown field or a value of the wrong kind.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, raw in values.items():
            if name not in names:
                raise InvalidRequestError(
                    f"unknown config field {name!r} (known: {', '.join(sorted(names))})"
                )
            if raw is None:
                continue
            if name == "mode":
                kwargs[name] = _parse_choice(name, raw, SelectionMode, "selection_mode_")
            elif name == "estimator":
                kwargs[name] = _parse_choice(name, raw, EstimatorKind, "estimator_kind_")
            elif name == "seed":
                kwargs[name] = _parse_int(name, raw)
            else:
                kwargs[name] = _parse_float(name, raw)
        return cls(**kwargs)


_Choice = TypeVar("_Choice", SelectionMode, EstimatorKind)


def _parse_choice(name: str, raw: Any, kind: type[_Choice], prefix: str) -> _Choice:
    """A member of ``kind`` from itself or its value (case-insensitive, proto prefix allowed)."""
    if isinstance(raw, kind):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower().removeprefix(prefix)
        for member in kind:
            if member.value == text:
                return member
    choices = ", ".join(m.value for m in kind)
    raise InvalidRequestError(f"config {name} must be one of {choices}, got {raw!r}")


def _parse_int(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise InvalidRequestError(f"config {name} must be an integer, got {raw!r}")
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(f"config {name} must be an integer, got {raw!r}") from None


def _parse_float(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidRequestError(f"config {name} must be a number, got {raw!r}")
    try:
        return float(raw)
    except ValueError:
        raise InvalidRequestError(f"config {name} must be a number, got {raw!r}") from None


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a pool.

    Attributes:
        key: Stable key (1..512 UTF-8 bytes), unique within the pool.
        weak: Pass rate in [0, 1] of the weaker reference model; None = unknown.
        strong: Pass rate in [0, 1] of the stronger reference model; None =
            unknown. Weak and strong are given together or not at all.
        prior_alpha: Prior alpha0 > 0; None = 1.
        prior_beta: Prior beta0 > 0; None = 1.
        embedding: Vector for the similarity estimator (1..1024 finite
            values; every task of a pool has one, of one dimension, or none
            has); empty = none. A pool returns it reduced (at most 32 values).
    """

    key: str
    weak: float | None = None
    strong: float | None = None
    prior_alpha: float | None = None
    prior_beta: float | None = None
    embedding: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class PoolInfo:
    """A pool's effective config and running statistics.

    Attributes:
        name: Pool name.
        config: Effective config, every field set.
        task_count: Number of tasks.
        steps_applied: BOTS updates applied (closed selections + standalone reports).
        open_selections: Selections opened and not yet closed.
        last_effective_task_ratio: ETR of the latest applied step; NaN before any step.
        rolling_effective_task_ratio: Mean ETR over the last 100 steps; NaN before any step.
        capability: Capability coefficient mu~; NaN until first computed.
        tasks_with_references: Tasks that have weak and strong reference rates.
        selections_opened: Selections ever opened.
        selections_expired: Selections closed because their wait window expired.
        mean_posterior: Mean of the posterior means; NaN for an empty pool.
        runs: The runs that took steps in the pool, busiest first.
    """

    name: str
    config: PoolConfig
    task_count: int
    steps_applied: int
    open_selections: int
    last_effective_task_ratio: float
    rolling_effective_task_ratio: float
    capability: float
    tasks_with_references: int
    selections_opened: int
    selections_expired: int
    mean_posterior: float
    runs: tuple[RunInfo, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One training run of a pool (several runs may share a pool).

    Attributes:
        run_id: The run id its selections carried ("" for steps that named none).
        first_seen: Unix seconds of its first selection or report.
        last_seen: Unix seconds of its latest one.
        steps: Steps of this run applied.
        capability: The run's own capability coefficient mu_r; NaN until computed.
        last_effective_task_ratio: ETR of its latest step.
        rolling_effective_task_ratio: Mean ETR over its last 100 steps.
        active: Whether it counts as sharing the pool now (a step among the last 256).
        offset: How much easier tasks are for it than the pool's posteriors say,
            in reference gaps; 0 when it does not share the pool.
    """

    run_id: str
    first_seen: float
    last_seen: float
    steps: int
    capability: float
    last_effective_task_ratio: float
    rolling_effective_task_ratio: float
    active: bool
    offset: float = 0.0


@dataclasses.dataclass(frozen=True)
class SelectedTask:
    """A task chosen for a batch.

    Attributes:
        key: Task key.
        index: Dense index of the task in its pool.
        sampled_p: The value the selection rule scored (draw or posterior mean).
        posterior_mean: Posterior mean alpha / (alpha + beta) when selected.
    """

    key: str
    index: int
    sampled_p: float
    posterior_mean: float


@dataclasses.dataclass(frozen=True)
class Selection:
    """A selection (one BOTS step) opened by `select_batch`.

    Attributes:
        selection_id: Opaque id to pass to `report_outcomes`.
        tasks: Selected tasks, best score first.
        replayed: True when this (pool, run_id, step) had been selected before.
        posterior_version: ``steps_applied`` of the posterior it was drawn from.
        expected_trials: Trials each task is expected to report.
    """

    selection_id: str
    tasks: tuple[SelectedTask, ...]
    replayed: bool
    posterior_version: int
    expected_trials: float

    @property
    def keys(self) -> tuple[str, ...]:
        """Keys of the selected tasks, in selection order."""
        return tuple(t.key for t in self.tasks)

    @property
    def indices(self) -> tuple[int, ...]:
        """Pool indices of the selected tasks, in selection order."""
        return tuple(t.index for t in self.tasks)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Evidence for one task: ``successes`` out of ``trials`` rollouts.

    Attributes:
        task_key: Task key.
        successes: Successes in [0, trials]; may be fractional (graded rewards).
        trials: Rollouts, > 0.
    """

    task_key: str
    successes: float
    trials: float


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """The answer to `report_outcomes`.

    Attributes:
        duplicate: True when this request id had already been applied; the
            other fields are then the original answer.
        selection_state: State of the selection after the report
            (UNSPECIFIED for a standalone report).
        steps_applied: BOTS updates this report caused (0 or 1).
        posterior_version: ``steps_applied`` of the pool after the report.
    """

    duplicate: bool
    selection_state: SelectionState
    steps_applied: int
    posterior_version: int


@dataclasses.dataclass(frozen=True)
class TaskPosterior:
    """The Beta posterior of one task.

    Attributes:
        task: The task as registered (key, reference rates, prior).
        alpha: Posterior alpha.
        beta: Posterior beta.
    """

    task: Task
    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        """Posterior mean alpha / (alpha + beta)."""
        total = self.alpha + self.beta
        return self.alpha / total if total > 0 else math.nan


@dataclasses.dataclass(frozen=True)
class PoolHeader:
    """The pool-level part of an export.

    Attributes:
        name: Pool name.
        config: Effective config.
        task_count: Number of tasks.
        steps_applied: BOTS updates applied.
        capability: Capability coefficient mu~; NaN when not yet computed.
        selections_opened: Selections ever opened.
    """

    name: str
    config: PoolConfig
    task_count: int
    steps_applied: int
    capability: float
    selections_opened: int

"""Pool hyper-parameters, selection modes and the named presets of the paper."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from bots_core._errors import InvalidInputError


class EstimatorKind(str, enum.Enum):
    """Where implicit evidence comes from (docs/algorithm.md §3, docs/similarity.md)."""

    INTERPOLATION = "interpolation"
    SIMILARITY = "similarity"
    BOTH = "both"


class SelectionMode(str, enum.Enum):
    """How a batch is chosen from the posteriors (docs/algorithm.md §4)."""

    THOMPSON = "thompson"
    GREEDY = "greedy"
    SOFTMAX = "softmax"
    UNIFORM = "uniform"


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Hyper-parameters of one pool.

    Attributes:
        forgetting: Forgetting rate lambda in [0, 1].
        implicit_weight: Weight rho in [0, 1] of implicit evidence.
        pseudo_rollouts: Pseudo-rollout count n > 0 for implicit evidence; also
            the trials a selected task is expected to report by default.
        target: Target success probability p* in [0, 1].
        momentum: Momentum gamma in [0, 1) of the capability coefficient.
        mode: Selection rule.
        temperature: Softmax temperature tau > 0 (SOFTMAX only).
        seed: Seed of the pool's random generators (0 .. 2**64 - 1).
        selection_wait_seconds: How long an open selection waits for reports.
        min_reference_gap: Smallest |mean strong - mean weak| over a batch for
            which a new capability coefficient is computed.
        estimator: Source of implicit evidence: the reference interpolation,
            similarity to evaluated tasks (needs task embeddings), or both.
    """

    forgetting: float = 0.1
    implicit_weight: float = 0.1
    pseudo_rollouts: float = 16.0
    target: float = 0.5
    momentum: float = 0.9
    mode: SelectionMode = SelectionMode.THOMPSON
    temperature: float = 0.1
    seed: int = 0
    selection_wait_seconds: float = 600.0
    min_reference_gap: float = 1e-3
    estimator: EstimatorKind = EstimatorKind.INTERPOLATION

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInputError(f"config.{name} must be finite, got {value}")
            if not ok:
                raise InvalidInputError(f"config.{name} must be {what}, got {value!r}")

        check("forgetting", 0.0 <= self.forgetting <= 1.0, "in [0, 1]")
        check("implicit_weight", 0.0 <= self.implicit_weight <= 1.0, "in [0, 1]")
        check("pseudo_rollouts", 0.0 < self.pseudo_rollouts <= 1e6, "in (0, 1e6]")
        check("target", 0.0 <= self.target <= 1.0, "in [0, 1]")
        check("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")
        check("temperature", 0.0 < self.temperature <= 1e6, "in (0, 1e6]")
        check("seed", 0 <= self.seed < 2**64, "in [0, 2**64)")
        check(
            "selection_wait_seconds",
            0.0 < self.selection_wait_seconds <= 30 * 86400.0,
            "in (0, 30 days]",
        )
        check("min_reference_gap", 0.0 <= self.min_reference_gap <= 1.0, "in [0, 1]")
        if not isinstance(self.mode, SelectionMode):
            raise InvalidInputError(f"config.mode must be a SelectionMode, got {self.mode!r}")
        if not isinstance(self.estimator, EstimatorKind):
            raise InvalidInputError(
                f"config.estimator must be an EstimatorKind, got {self.estimator!r}"
            )

    def replace(self, **changes: Any) -> PoolConfig:
        """Returns a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (mode as its string value)."""
        out = dataclasses.asdict(self)
        out["mode"] = self.mode.value
        out["estimator"] = self.estimator.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown config fields: {', '.join(unknown)}")
        values = dict(data)
        if "mode" in values:
            try:
                values["mode"] = SelectionMode(values["mode"])
            except ValueError:
                raise InvalidInputError(f"unknown selection mode {values['mode']!r}") from None
        if "estimator" in values:
            try:
                values["estimator"] = EstimatorKind(values["estimator"])
            except ValueError:
                raise InvalidInputError(f"unknown estimator {values['estimator']!r}") from None
        return cls(**values)


PRESETS: dict[str, PoolConfig] = {
    # The paper's method: forgetting and a little implicit evidence, Thompson.
    "bots": PoolConfig(),
    # BOTS-MoPPS: explicit evidence only.
    "explicit_only": PoolConfig(implicit_weight=0.0),
    # BOTS-DOTS: only the current step's evidence, greedy on the mean.
    "implicit_only": PoolConfig(forgetting=1.0, implicit_weight=1.0, mode=SelectionMode.GREEDY),
    # The Random baseline (posteriors are still tracked, for statistics).
    "uniform": PoolConfig(mode=SelectionMode.UNIFORM),
    # Implicit evidence from similar tasks' outcomes: no reference models needed.
    "similarity": PoolConfig(estimator=EstimatorKind.SIMILARITY),
    # Both estimators, averaged by their confidences.
    "bots+similarity": PoolConfig(estimator=EstimatorKind.BOTH),
}


def preset(name: str) -> PoolConfig:
    """Returns the named preset; '' means 'bots'."""
    try:
        return PRESETS[name or "bots"]
    except KeyError:
        names = ", ".join(sorted(PRESETS))
        raise InvalidInputError(f"unknown preset {name!r} (known: {names})") from None

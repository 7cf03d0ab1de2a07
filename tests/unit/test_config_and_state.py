"""Validation of configs, task specs and reports; registration; public API surface."""

from __future__ import annotations

import math
import re

import bots_core
import numpy as np
import pytest
from bots_core import (
    MAX_KEY_BYTES,
    PRESETS,
    BotsCoreError,
    CorruptStateError,
    EstimatorKind,
    InvalidInputError,
    PoolConfig,
    PoolState,
    SelectionMode,
    TaskConflictError,
    TaskSpec,
    UnknownTaskError,
    aggregate,
    apply_step,
    batch_capability,
    preset,
)

NAN = math.nan
INF = math.inf


# ------------------------------------------------------------------ PoolConfig
BAD_CONFIG_VALUES = [
    ("forgetting", -0.01),
    ("forgetting", 1.01),
    ("forgetting", NAN),
    ("implicit_weight", -1e-9),
    ("implicit_weight", 2.0),
    ("implicit_weight", INF),
    ("pseudo_rollouts", 0.0),
    ("pseudo_rollouts", -4.0),
    ("pseudo_rollouts", 2e6),
    ("pseudo_rollouts", NAN),
    ("target", -0.1),
    ("target", 1.5),
    ("target", NAN),
    ("momentum", 1.0),
    ("momentum", -0.5),
    ("momentum", NAN),
    ("temperature", 0.0),
    ("temperature", -1.0),
    ("temperature", INF),
    ("seed", -1),
    ("seed", 2**64),
    ("selection_wait_seconds", 0.0),
    ("selection_wait_seconds", 31 * 86400.0),
    ("selection_wait_seconds", NAN),
    ("min_reference_gap", -1e-3),
    ("min_reference_gap", 1.5),
    ("min_reference_gap", NAN),
    ("mode", "thompson"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIG_VALUES)
def test_out_of_range_config_field_is_rejected_by_name(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=rf"\bconfig\.{field}\b"):
        PoolConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIG_VALUES)
def test_replace_validates_the_changed_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=field):
        PoolConfig().replace(**{field: value})


@pytest.mark.parametrize(
    "changes",
    [
        {"forgetting": 0.0, "implicit_weight": 0.0},
        {"forgetting": 1.0, "implicit_weight": 1.0, "target": 0.0},
        {"target": 1.0, "momentum": 0.0, "min_reference_gap": 0.0},
        {"seed": 0},
        {"seed": 2**64 - 1},
        {"pseudo_rollouts": 1e6, "temperature": 1e6, "selection_wait_seconds": 30 * 86400.0},
    ],
)
def test_boundary_config_values_are_accepted(changes: dict[str, object]) -> None:
    config = PoolConfig(**changes)  # type: ignore[arg-type]
    for field, value in changes.items():
        assert getattr(config, field) == value


def test_default_config_is_the_paper_setting() -> None:
    config = PoolConfig()
    assert (config.forgetting, config.implicit_weight) == (0.1, 0.1)
    assert config.pseudo_rollouts == 16.0
    assert config.target == 0.5
    assert config.momentum == 0.9
    assert config.mode is SelectionMode.THOMPSON
    assert config.min_reference_gap == 1e-3


def test_presets_match_the_paper_variants() -> None:
    assert sorted(PRESETS) == [
        "bots",
        "bots+similarity",
        "explicit_only",
        "implicit_only",
        "similarity",
        "uniform",
    ]
    bots = preset("bots")
    assert (bots.forgetting, bots.implicit_weight, bots.mode) == (0.1, 0.1, SelectionMode.THOMPSON)
    explicit = preset("explicit_only")
    assert explicit.implicit_weight == 0.0
    assert explicit.forgetting == 0.1
    assert explicit.mode is SelectionMode.THOMPSON
    implicit = preset("implicit_only")
    assert (implicit.forgetting, implicit.implicit_weight) == (1.0, 1.0)
    assert implicit.mode is SelectionMode.GREEDY
    assert preset("uniform").mode is SelectionMode.UNIFORM
    assert preset("") == bots
    assert preset("similarity") == bots.replace(estimator=EstimatorKind.SIMILARITY)
    assert preset("bots+similarity") == bots.replace(estimator=EstimatorKind.BOTH)


def test_unknown_preset_is_rejected_with_known_names() -> None:
    with pytest.raises(
        InvalidInputError,
        match="bots, bots\\+similarity, explicit_only, implicit_only, similarity, uniform",
    ):
        preset("bost")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_dict_round_trip(name: str) -> None:
    config = PRESETS[name].replace(seed=2**63 + 5, temperature=0.25)
    data = config.to_dict()
    assert data["mode"] == config.mode.value
    assert isinstance(data["mode"], str)
    assert PoolConfig.from_dict(data) == config


def test_config_from_partial_dict_uses_defaults() -> None:
    assert PoolConfig.from_dict({"forgetting": 0.5}) == PoolConfig(forgetting=0.5)
    assert PoolConfig.from_dict({}) == PoolConfig()


def test_config_from_dict_rejects_unknown_fields() -> None:
    data = PoolConfig().to_dict() | {"lambda": 0.1, "extra": 1}
    with pytest.raises(InvalidInputError, match="unknown config fields: extra, lambda"):
        PoolConfig.from_dict(data)


def test_config_from_dict_rejects_unknown_mode() -> None:
    with pytest.raises(InvalidInputError, match="selection mode"):
        PoolConfig.from_dict({"mode": "epsilon_greedy"})


def test_config_from_dict_validates_values() -> None:
    with pytest.raises(InvalidInputError, match=r"config\.forgetting"):
        PoolConfig.from_dict({"forgetting": 3.0})


# -------------------------------------------------------------------- TaskSpec
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TaskSpec("t", weak=0.2), "go together"),
        (TaskSpec("t", strong=0.6), "go together"),
        (TaskSpec("t", -0.1, 0.5), "weak reference rate"),
        (TaskSpec("t", 0.1, 1.5), "strong reference rate"),
        (TaskSpec("t", 0.1, INF), "strong reference rate"),
        (TaskSpec("t", prior_alpha=0.0), "prior_alpha"),
        (TaskSpec("t", prior_beta=-1.0), "prior_beta"),
        (TaskSpec("t", prior_alpha=NAN), "prior_alpha"),
        (TaskSpec("t", prior_beta=INF), "prior_beta"),
        (TaskSpec("t", prior_alpha=2e9), "prior_alpha"),
        (TaskSpec(""), "task key"),
        (TaskSpec("x" * (MAX_KEY_BYTES + 1)), "task key"),
        (TaskSpec("é" * (MAX_KEY_BYTES // 2 + 1)), "task key"),  # 2 bytes per char
        (TaskSpec("bad \udc80 surrogate"), "task key"),  # not encodable as UTF-8
    ],
)
def test_malformed_task_spec_is_rejected(spec: TaskSpec, message: str) -> None:
    state = PoolState("p", PoolConfig())
    with pytest.raises(InvalidInputError, match=message):
        state.add_tasks([spec])
    assert state.task_count == 0


def test_boundary_task_specs_are_accepted() -> None:
    state = PoolState("p", PoolConfig())
    added = state.add_tasks(
        [
            TaskSpec("x" * MAX_KEY_BYTES),
            TaskSpec("é" * (MAX_KEY_BYTES // 2)),
            TaskSpec("zero", 0.0, 0.0),
            TaskSpec("one", 1.0, 1.0),
            TaskSpec("reversed", 0.9, 0.1),  # strong below weak is allowed
            TaskSpec("priors", prior_alpha=1e-6, prior_beta=1e9),
        ]
    )
    assert added == 6
    i = state.index["priors"]
    assert (state.alpha[i], state.beta[i]) == (1e-6, 1e9)


# ------------------------------------------------------------------ add_tasks
def test_adding_identical_specs_again_is_a_no_op() -> None:
    state = PoolState("p", PoolConfig())
    specs = [TaskSpec("a", 0.2, 0.6), TaskSpec("b"), TaskSpec("c", prior_alpha=2.0)]
    assert state.add_tasks(specs) == 3
    state.alpha[:] = [5.0, 6.0, 7.0]
    assert state.add_tasks(specs) == 0
    assert state.add_tasks([TaskSpec("b"), TaskSpec("d")]) == 1
    assert state.keys == ["a", "b", "c", "d"]
    assert state.index == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert state.alpha.tolist() == [5.0, 6.0, 7.0, 1.0]  # posteriors kept


def test_same_key_twice_in_one_batch_is_added_once() -> None:
    state = PoolState("p", PoolConfig())
    assert state.add_tasks([TaskSpec("a", 0.1, 0.2), TaskSpec("a", 0.1, 0.2)]) == 1
    assert state.task_count == 1


def test_same_key_twice_differently_in_one_batch_is_rejected() -> None:
    state = PoolState("p", PoolConfig())
    with pytest.raises(InvalidInputError, match="twice"):
        state.add_tasks([TaskSpec("a", 0.1, 0.2), TaskSpec("a", 0.1, 0.3)])
    assert state.task_count == 0


@pytest.mark.parametrize(
    "changed",
    [
        TaskSpec("a", 0.2, 0.7),
        TaskSpec("a"),
        TaskSpec("a", 0.2, 0.6, prior_alpha=2.0),
        TaskSpec("a", 0.2, 0.6, prior_beta=0.5),
    ],
)
def test_changed_spec_for_existing_key_conflicts(changed: TaskSpec) -> None:
    state = PoolState("p", PoolConfig())
    state.add_tasks([TaskSpec("a", 0.2, 0.6)])
    with pytest.raises(TaskConflictError, match="'a'"):
        state.add_tasks([changed])
    assert state.task_spec(0) == TaskSpec("a", 0.2, 0.6)


def test_batch_with_a_conflict_adds_nothing() -> None:
    state = PoolState("p", PoolConfig())
    state.add_tasks([TaskSpec("a", 0.2, 0.6), TaskSpec("b")])
    with pytest.raises(TaskConflictError):
        state.add_tasks([TaskSpec("new1"), TaskSpec("b", 0.1, 0.2), TaskSpec("new2")])
    with pytest.raises(InvalidInputError):
        state.add_tasks([TaskSpec("new3"), TaskSpec("bad", weak=0.5)])
    assert state.keys == ["a", "b"]
    assert len(state.alpha) == len(state.beta) == len(state.weak) == 2


def test_missing_reference_rates_compare_equal_on_re_registration() -> None:
    state = PoolState("p", PoolConfig())
    state.add_tasks([TaskSpec("a")])
    assert state.add_tasks([TaskSpec("a", NAN, NAN)]) == 0


# ------------------------------------------------------------------ aggregate
def _pool() -> PoolState:
    state = PoolState("p", PoolConfig())
    state.add_tasks([TaskSpec("a", 0.2, 0.6), TaskSpec("b"), TaskSpec("c", 0.4, 1.0)])
    return state


@pytest.mark.parametrize(
    ("successes", "trials", "message"),
    [
        (NAN, 4.0, "finite"),
        (1.0, NAN, "finite"),
        (INF, INF, "finite"),
        (1.0, INF, "finite"),
        (-1.0, 4.0, "successes must be >= 0"),
        (5.0, 4.0, "exceed trials"),
        (0.0, 0.0, "trials must be > 0"),
        (0.0, -2.0, "trials must be > 0"),
    ],
)
def test_malformed_counts_are_rejected(successes: float, trials: float, message: str) -> None:
    state = _pool()
    with pytest.raises(InvalidInputError, match=message):
        aggregate(state, [("a", 1.0, 2.0), ("b", successes, trials)])


def test_unknown_task_key_is_rejected() -> None:
    state = _pool()
    with pytest.raises(UnknownTaskError, match="'zzz'") as info:
        aggregate(state, [("a", 1.0, 2.0), ("zzz", 1.0, 2.0)])
    assert isinstance(info.value, BotsCoreError)
    assert "zzz" in str(info.value)


def test_fractional_counts_are_accepted() -> None:
    state = _pool()
    evidence = aggregate(state, [("a", 0.75, 1.0), ("a", 2.5, 3.0), ("c", 0.0, 0.5)])
    assert evidence.indices.tolist() == [0, 2]
    assert evidence.successes.tolist() == [3.25, 0.0]
    assert evidence.trials.tolist() == [4.0, 0.5]


def test_aggregate_does_not_change_the_state() -> None:
    state = _pool()
    before = state.to_bytes()
    aggregate(state, [("a", 1.0, 2.0)])
    assert state.to_bytes() == before


# ---------------------------------------------------------- implicit evidence
def test_task_without_reference_rates_only_decays_toward_its_prior() -> None:
    state = PoolState("p", PoolConfig(forgetting=0.1, implicit_weight=0.5))
    state.add_tasks([TaskSpec("ref", 0.0, 1.0), TaskSpec("free", prior_alpha=2.0)])
    state.alpha[1], state.beta[1] = 10.0, 4.0
    apply_step(state, aggregate(state, [("ref", 6.0, 8.0)]))
    assert not math.isnan(state.capability)
    assert state.alpha[1] == pytest.approx(0.9 * 10.0 + 0.1 * 2.0, rel=0, abs=1e-12)
    assert state.beta[1] == pytest.approx(0.9 * 4.0 + 0.1 * 1.0, rel=0, abs=1e-12)


def test_pool_without_reference_rates_is_explicit_only() -> None:
    with_rho = PoolState("p", PoolConfig(implicit_weight=0.9))
    without = PoolState("p", PoolConfig(implicit_weight=0.0))
    for state in (with_rho, without):
        state.add_tasks([TaskSpec(f"t{i}") for i in range(4)])
        for _ in range(3):
            apply_step(state, aggregate(state, [("t0", 3.0, 4.0), ("t2", 0.0, 4.0)]))
        assert math.isnan(state.capability)
    assert np.array_equal(with_rho.alpha, without.alpha)
    assert np.array_equal(with_rho.beta, without.beta)


def test_batch_without_referenced_tasks_keeps_capability() -> None:
    state = _pool()
    apply_step(state, aggregate(state, [("a", 2.0, 4.0)]))  # mu = 0.75
    assert state.capability == pytest.approx(0.75, rel=0, abs=1e-12)
    apply_step(state, aggregate(state, [("b", 4.0, 4.0)]))
    assert state.capability == pytest.approx(0.75, rel=0, abs=1e-12)


def test_capability_ignores_unreferenced_tasks_of_the_batch() -> None:
    state = _pool()
    evidence = aggregate(state, [("a", 2.0, 4.0), ("b", 0.0, 4.0)])
    assert batch_capability(state, evidence) == pytest.approx(0.75, rel=0, abs=1e-12)


def _gap_pool(min_gap: float) -> PoolState:
    state = PoolState("p", PoolConfig(min_reference_gap=min_gap))
    state.add_tasks(
        [
            TaskSpec("wide", 0.2, 0.6),
            TaskSpec("flat", 0.5, 0.5),
            TaskSpec("narrow", 0.5, 0.5004),
            TaskSpec("u", 0.0, 1.0),
        ]
    )
    return state


@pytest.mark.parametrize("batch", [[("flat", 1.0, 4.0)], [("narrow", 4.0, 4.0)]])
def test_small_reference_gap_keeps_capability(batch: list[tuple[str, float, float]]) -> None:
    state = _gap_pool(1e-3)
    assert batch_capability(state, aggregate(state, batch)) is None
    apply_step(state, aggregate(state, batch))
    assert math.isnan(state.capability)  # first update: still unknown

    apply_step(state, aggregate(state, [("wide", 2.0, 4.0)]))  # mu = 0.75
    apply_step(state, aggregate(state, batch))
    assert state.capability == pytest.approx(0.75, rel=0, abs=1e-12)
    assert np.all(np.isfinite(state.alpha)) and np.all(np.isfinite(state.beta))


def test_gap_above_threshold_gives_a_new_capability() -> None:
    state = _gap_pool(1e-4)
    mu = batch_capability(state, aggregate(state, [("narrow", 4.0, 4.0)]))
    assert mu == pytest.approx(0.5 / 0.0004, rel=1e-6)


@pytest.mark.parametrize("trials", [1.0, 4.0])
def test_zero_reference_gap_never_divides_by_zero(trials: float) -> None:
    # With the guard off (min_reference_gap = 0) a flat batch still gives no mu.
    state = _gap_pool(0.0)
    evidence = aggregate(state, [("flat", 1.0, trials)])
    assert batch_capability(state, evidence) is None
    apply_step(state, evidence)
    assert math.isnan(state.capability)
    assert np.all(np.isfinite(state.alpha)) and np.all(np.isfinite(state.beta))


def test_tiny_reference_gap_without_guard_keeps_state_finite() -> None:
    state = PoolState("p", PoolConfig(min_reference_gap=0.0))
    state.add_tasks([TaskSpec("tiny", 0.0, 5e-324), TaskSpec("flat", 0.3, 0.3)])
    apply_step(state, aggregate(state, [("tiny", 1.0, 2.0)]))
    assert not math.isinf(state.capability)
    assert np.all(np.isfinite(state.alpha)) and np.all(np.isfinite(state.beta))


# ------------------------------------------------------------- step statistics
def test_step_reports_effective_task_ratio() -> None:
    state = _pool()
    result = apply_step(
        state, aggregate(state, [("a", 0.0, 4.0), ("b", 2.0, 4.0), ("c", 4.0, 4.0)])
    )
    assert result.evaluated == 3
    assert result.effective_task_ratio == pytest.approx(1 / 3)
    assert result.positive_ratio == pytest.approx(2 / 3)
    assert result.below_one_ratio == pytest.approx(2 / 3)
    assert state.last_etr == pytest.approx(1 / 3)
    empty = apply_step(state, aggregate(state, []))
    assert empty.evaluated == 0 and math.isnan(empty.effective_task_ratio)
    assert list(state.recent_etr) == [pytest.approx(1 / 3)]  # empty steps are not counted
    assert state.steps_applied == 2


# ------------------------------------------------------------------ bytes I/O
def test_bytes_that_are_not_a_pool_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="magic"):
        PoolState.from_bytes(b"not a pool at all")


def test_truncated_pool_bytes_are_rejected() -> None:
    state = _pool()
    state.capability = 0.3
    data = state.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(InvalidInputError):
            PoolState.from_bytes(data[:cut])
    with pytest.raises(InvalidInputError):
        PoolState.from_bytes(data + b"x")


# ------------------------------------------------------------------ public API
def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest.
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


def test_public_names_are_sorted_and_exist() -> None:
    names = bots_core.__all__
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(bots_core, name), name


def test_public_errors_share_one_base() -> None:
    for error in (InvalidInputError, UnknownTaskError, TaskConflictError, CorruptStateError):
        assert issubclass(error, BotsCoreError)
    public_classes = [
        getattr(bots_core, n) for n in bots_core.__all__ if re.fullmatch(r"[A-Z]\w*Error", n)
    ]
    assert set(public_classes) == {
        BotsCoreError,
        InvalidInputError,
        UnknownTaskError,
        TaskConflictError,
        CorruptStateError,
    }

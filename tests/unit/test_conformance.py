"""Conformance vectors V1-V9 of docs/algorithm.md §7."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import (
    DEFAULT_ESTIMATOR,
    PoolConfig,
    PoolState,
    TaskSpec,
    aggregate,
    apply_step,
    batch_capability,
    select_batch,
    top_k,
)

TOL = 1e-9
NAN = math.nan


def make_pool(
    tasks: list[tuple[str, float, float]],
    start: dict[str, tuple[float, float]] | None = None,
    **config: float,
) -> PoolState:
    """A pool with prior (1, 1) everywhere, tasks (key, weak, strong), some posteriors set."""
    state = PoolState("conformance", PoolConfig(**config))
    state.add_tasks([TaskSpec(key, w, g) for key, w, g in tasks])
    for key, (a, b) in (start or {}).items():
        i = state.index[key]
        state.alpha[i] = a
        state.beta[i] = b
    return state


def posterior(state: PoolState, key: str) -> tuple[float, float]:
    i = state.index[key]
    return float(state.alpha[i]), float(state.beta[i])


def assert_close(actual: object, expected: object, tol: float = TOL) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=tol
    )


def step(state: PoolState, outcomes: list[tuple[str, float, float]]) -> None:
    apply_step(state, aggregate(state, outcomes))


def p_tilde(state: PoolState, key: str) -> float:
    est = DEFAULT_ESTIMATOR.estimate(state)
    assert est is not None
    p, mask = est
    i = state.index[key]
    assert mask[i]
    return float(p[i])


# --------------------------------------------------------------------- V1, V1b
def _v1_pool() -> PoolState:
    # The selected task has reference rates and the capability is known, so an
    # implementation that mixes implicit evidence into selected tasks differs.
    state = make_pool(
        [("sel", 0.2, 0.6), ("other", 0.1, 0.5)],
        start={"sel": (2.0, 3.0)},
        forgetting=0.1,
        implicit_weight=0.1,
        pseudo_rollouts=4.0,
    )
    state.capability = 0.5
    return state


def test_selected_task_gets_explicit_evidence_at_full_weight() -> None:
    state = _v1_pool()
    step(state, [("sel", 3.0, 4.0)])
    assert_close(posterior(state, "sel"), (4.9, 3.8))


def test_selected_task_is_not_down_weighted_by_rho() -> None:
    state = _v1_pool()
    step(state, [("sel", 3.0, 4.0)])
    wrong = (4.6, 3.7)  # (1 - rho) * s with s~ = 0: the misreading V1b catches
    assert not np.allclose(posterior(state, "sel"), wrong, rtol=0, atol=1e-3)


# -------------------------------------------------------------------------- V2
def test_unselected_task_gets_implicit_evidence_at_weight_rho_n() -> None:
    # The selected task (w, g) = (0, 1) observed 4/16 gives mu = 0.25, so the
    # unselected task with (0, 1) gets p~ = 0.25.
    state = make_pool(
        [("sel", 0.0, 1.0), ("u", 0.0, 1.0)],
        start={"u": (2.0, 3.0)},
        forgetting=0.1,
        implicit_weight=0.1,
        pseudo_rollouts=16.0,
    )
    step(state, [("sel", 4.0, 16.0)])
    assert p_tilde(state, "u") == pytest.approx(0.25, rel=0, abs=TOL)
    assert_close(posterior(state, "u"), (2.3, 4.0))


# -------------------------------------------------------------------------- V3
def test_no_forgetting_and_no_implicit_weight_is_classical_conjugate_update() -> None:
    state = make_pool(
        [("sel", NAN, NAN)], start={"sel": (2.0, 3.0)}, forgetting=0.0, implicit_weight=0.0
    )
    step(state, [("sel", 3.0, 4.0)])
    assert_close(posterior(state, "sel"), (5.0, 4.0))


@pytest.mark.parametrize("successes", [0.0, 4.0, 11.0, 16.0])
def test_unselected_task_is_unchanged_without_forgetting_and_implicit_weight(
    successes: float,
) -> None:
    state = make_pool(
        [("sel", 0.0, 1.0), ("u", 0.0, 1.0)],
        start={"u": (2.0, 3.0)},
        forgetting=0.0,
        implicit_weight=0.0,
    )
    step(state, [("sel", successes, 16.0)])
    assert state.capability == pytest.approx(successes / 16.0, rel=0, abs=TOL)
    assert posterior(state, "u") == (2.0, 3.0)


# -------------------------------------------------------------------------- V4
@pytest.mark.parametrize("start", [(2.0, 3.0), (1.0, 1.0), (57.5, 0.25), (0.01, 900.0)])
def test_full_forgetting_keeps_only_the_current_step_for_selected_tasks(
    start: tuple[float, float],
) -> None:
    state = make_pool(
        [("sel", 0.2, 0.6), ("u", 0.0, 1.0)],
        start={"sel": start},
        forgetting=1.0,
        implicit_weight=0.1,
    )
    step(state, [("sel", 3.0, 4.0)])
    assert_close(posterior(state, "sel"), (4.0, 2.0))


@pytest.mark.parametrize("start", [(2.0, 3.0), (40.0, 7.0)])
def test_full_forgetting_gives_unselected_task_prior_plus_implicit_evidence(
    start: tuple[float, float],
) -> None:
    state = make_pool(
        [("sel", 0.0, 1.0), ("u", 0.0, 1.0)],
        start={"u": start},
        forgetting=1.0,
        implicit_weight=0.1,
        pseudo_rollouts=16.0,
    )
    step(state, [("sel", 4.0, 16.0)])  # mu = 0.25 -> p~ = 0.25 for "u"
    assert_close(posterior(state, "u"), (1.4, 2.2))


# -------------------------------------------------------------------------- V5
V5_TASKS = [
    ("a", 0.2, 0.6),
    ("b", 0.4, 1.0),
    ("c", 0.1, 0.5),
    ("d", 0.9, 1.0),
    ("e", 0.0, 0.0),
]


@pytest.mark.parametrize(
    "first_batch",
    [
        [("a", 8.0, 16.0), ("b", 12.0, 16.0)],
        [("a", 2.0, 4.0), ("b", 6.0, 8.0)],  # per-task trials may differ
    ],
)
def test_capability_coefficient_is_position_on_weak_to_strong_line(
    first_batch: list[tuple[str, float, float]],
) -> None:
    state = make_pool(V5_TASKS)
    evidence = aggregate(state, first_batch)
    mu = batch_capability(state, evidence)
    assert mu is not None
    assert mu == pytest.approx(0.65, rel=0, abs=TOL)

    result = apply_step(state, evidence)
    # First update: mu~ = mu.
    assert state.capability == pytest.approx(0.65, rel=0, abs=TOL)
    assert result.capability == state.capability


def test_implicit_estimate_interpolates_and_clips_reference_rates() -> None:
    state = make_pool(V5_TASKS)
    step(state, [("a", 8.0, 16.0), ("b", 12.0, 16.0)])
    assert p_tilde(state, "c") == pytest.approx(0.36, rel=0, abs=TOL)
    assert p_tilde(state, "d") == pytest.approx(0.965, rel=0, abs=TOL)
    assert p_tilde(state, "e") == 0.0


def test_capability_coefficient_is_smoothed_with_momentum_after_first_update() -> None:
    state = make_pool(V5_TASKS, momentum=0.9)
    step(state, [("a", 8.0, 16.0), ("b", 12.0, 16.0)])
    second = aggregate(state, [("c", 4.0, 16.0), ("d", 16.0, 16.0)])
    mu = batch_capability(state, second)
    assert mu is not None
    assert mu == pytest.approx(0.5, rel=0, abs=TOL)
    apply_step(state, second)
    assert state.capability == pytest.approx(0.635, rel=0, abs=TOL)


# -------------------------------------------------------------------------- V6
def test_two_full_steps_match_reference_values() -> None:
    state = make_pool(
        [
            ("t0", 0.2, 0.6),
            ("t1", 0.4, 1.0),
            ("t2", 0.1, 0.5),
            ("t3", 0.9, 1.0),
            ("t4", 0.0, 0.0),
        ],
        forgetting=0.1,
        implicit_weight=0.1,
        pseudo_rollouts=16.0,
        momentum=0.9,
    )
    step(state, [("t0", 8.0, 16.0), ("t1", 12.0, 16.0)])
    expected_1 = {
        "t0": (9.0, 9.0),
        "t1": (13.0, 5.0),
        "t2": (1.576, 2.024),
        "t3": (2.544, 1.056),
        "t4": (1.0, 2.6),
    }
    for key, want in expected_1.items():
        assert_close(posterior(state, key), want, tol=1e-6)

    second = aggregate(state, [("t2", 4.0, 16.0), ("t3", 16.0, 16.0)])
    assert batch_capability(state, second) == pytest.approx(0.5, rel=0, abs=1e-6)
    apply_step(state, second)
    assert state.capability == pytest.approx(0.635, rel=0, abs=1e-6)
    expected_2 = {
        "t0": (8.9264, 9.0736),
        "t1": (13.0496, 4.9504),
        "t2": (5.5184, 13.9216),
        "t3": (18.3896, 1.0504),
        "t4": (1.0, 4.04),
    }
    for key, want in expected_2.items():
        assert_close(posterior(state, key), want, tol=1e-6)
    assert state.steps_applied == 2


# -------------------------------------------------------------------------- V7
V7_SAMPLES = np.array([0.9, 0.55, 0.1, 0.48, 0.3])


@pytest.mark.parametrize(("batch_size", "expected"), [(2, [3, 1]), (3, [3, 1, 4])])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_is_the_samples_closest_to_target_best_first(
    batch_size: int, expected: list[int], seed: int
) -> None:
    chosen = top_k(np.abs(V7_SAMPLES - 0.5), batch_size, np.random.default_rng(seed))
    assert chosen.tolist() == expected


def test_thompson_selection_ranks_draws_by_distance_to_target() -> None:
    # Posteriors so concentrated that each draw lies within ~1e-3 of V7's p^.
    state = make_pool([(f"t{i}", NAN, NAN) for i in range(5)])
    state.alpha[:] = V7_SAMPLES * 1e7
    state.beta[:] = (1.0 - V7_SAMPLES) * 1e7
    for number in range(5):
        assert select_batch(state, 2, number).indices.tolist() == [3, 1]
        assert select_batch(state, 3, number).indices.tolist() == [3, 1, 4]


# -------------------------------------------------------------------------- V8
def _v8_pool() -> PoolState:
    # "sel" with (w, g) = (0, 1) observed at rate 0.5 every step keeps mu~ = 0.5;
    # "never" with (0, 0.5) then has the constant p~ = 0.25.
    return make_pool(
        [("sel", 0.0, 1.0), ("never", 0.0, 0.5)],
        forgetting=0.1,
        implicit_weight=0.1,
        pseudo_rollouts=16.0,
    )


def test_effective_sample_size_follows_closed_form_for_fifty_steps() -> None:
    state = _v8_pool()
    for t in range(1, 51):
        step(state, [("sel", 8.0, 16.0)])
        decay = 1.0 - 0.9**t
        a_sel, b_sel = posterior(state, "sel")
        a_never, b_never = posterior(state, "never")
        assert a_never + b_never == pytest.approx(2.0 + 16.0 * decay, rel=0, abs=TOL)
        assert a_sel + b_sel == pytest.approx(2.0 + 160.0 * decay, rel=0, abs=TOL)
        # The components too: rate 0.25 for "never", 0.5 for "sel".
        assert a_never == pytest.approx(1.0 + 4.0 * decay, rel=0, abs=TOL)
        assert a_sel == pytest.approx(1.0 + 80.0 * decay, rel=0, abs=TOL)
        if t == 1:
            assert a_never + b_never == pytest.approx(3.6, rel=0, abs=TOL)


def test_posteriors_converge_to_stationary_beta_distributions() -> None:
    state = _v8_pool()
    for _ in range(400):
        step(state, [("sel", 8.0, 16.0)])
    assert_close(posterior(state, "never"), (5.0, 13.0), tol=1e-9)
    assert_close(posterior(state, "sel"), (81.0, 81.0), tol=1e-9)
    assert state.capability == pytest.approx(0.5, rel=0, abs=TOL)


# -------------------------------------------------------------------------- V9
def test_capability_extrapolates_and_implicit_estimate_is_clipped() -> None:
    state = make_pool(
        [("sel", 0.2, 0.6), ("x", 0.1, 0.5), ("y", 0.5, 0.9)],
        start={"x": (2.0, 3.0), "y": (2.0, 3.0)},
        forgetting=0.1,
        implicit_weight=0.1,
        pseudo_rollouts=4.0,
    )
    step(state, [("sel", 3.0, 4.0)])
    assert state.capability == pytest.approx(1.375, rel=0, abs=TOL)  # not clipped
    assert p_tilde(state, "x") == pytest.approx(0.65, rel=0, abs=TOL)
    assert p_tilde(state, "y") == 1.0  # 1.05 clipped
    assert_close(posterior(state, "x"), (2.16, 2.94))
    assert_close(posterior(state, "y"), (2.3, 2.8))

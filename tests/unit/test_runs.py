"""Several runs sharing a pool: forgetting per run-step, per-run capability, moved evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import (
    ACTIVE_STEPS,
    Evidence,
    PoolConfig,
    PoolState,
    SelectionMode,
    TaskSpec,
    apply_step,
    run_offset,
    select_batch,
)


def pool(config: PoolConfig, n: int = 6, refs: bool = True) -> PoolState:
    state = PoolState("p", config)
    state.add_tasks(
        [TaskSpec(f"t{k}", 0.1 * k, 0.1 * k + 0.4) if refs else TaskSpec(f"t{k}") for k in range(n)]
    )
    return state


def ev(idx: list[int], s: list[float], t: float = 8.0) -> Evidence:
    return Evidence(np.array(idx), np.array(s, dtype=float), np.full(len(idx), t))


def test_one_named_run_is_exactly_the_papers_update():
    cfg = PoolConfig()
    anonymous, named = pool(cfg), pool(cfg)
    for k in range(20):
        e = ev([k % 6, (k + 1) % 6], [float(k % 9), float((k * 5) % 9)])
        apply_step(anonymous, e)
        apply_step(named, e, run="trainer-0")
    assert np.array_equal(anonymous.alpha, named.alpha)
    assert np.array_equal(anonymous.beta, named.beta)
    assert anonymous.capability == named.capability == named.runs["trainer-0"].capability


def test_k_runs_forget_per_round_as_much_as_one_dedicated_run():
    cfg = PoolConfig(forgetting=0.2, implicit_weight=0.0)
    dedicated, shared = pool(cfg, refs=False), pool(cfg, refs=False)
    apply_step(dedicated, ev([0], [4.0]), run="a")
    for run in ("a", "b", "c", "d"):  # the runs join (the first round counts fewer runs)
        apply_step(shared, ev([0], [4.0]), run=run)
    for st in (dedicated, shared):
        _, beta = st.posterior_at(np.array([5]))
        st.store_at(np.array([5]), np.array([9.0]), beta)
    for _ in range(3):  # rounds; task 5 is never evaluated
        apply_step(dedicated, ev([0], [4.0]), run="a")
        for run in ("a", "b", "c", "d"):
            apply_step(shared, ev([0], [4.0]), run=run)
    assert shared.runs["d"].steps == 4
    assert math.isclose(shared.alpha[5], dedicated.alpha[5], rel_tol=1e-12)
    assert math.isclose(dedicated.alpha[5], 1.0 + 8.0 * 0.8**3, rel_tol=1e-12)


def test_k_runs_add_as_much_implicit_evidence_per_round_as_one_run():
    cfg = PoolConfig(forgetting=0.0, implicit_weight=0.5)
    dedicated, shared = pool(cfg), pool(cfg)
    e = ev([0, 1], [4.0, 4.0])
    gains = []
    for state, runs in ((dedicated, ("a",)), (shared, ("a", "b"))):
        for run in runs:  # the runs join
            apply_step(state, e, run=run)
        before = state.alpha[4:] + state.beta[4:]
        for run in runs:  # one round; same capability, so nothing is moved
            apply_step(state, e, run=run)
        gains.append(state.alpha[4:] + state.beta[4:] - before)
    np.testing.assert_allclose(gains[1], gains[0], rtol=1e-12)
    np.testing.assert_allclose(gains[0], 0.5 * 16)


def test_runs_age_out_of_the_sharing_count():
    cfg = PoolConfig(forgetting=0.1, implicit_weight=0.0)
    state = pool(cfg, refs=False)
    apply_step(state, ev([0], [1.0]), run="old")
    for _ in range(ACTIVE_STEPS + 1):
        apply_step(state, ev([0], [1.0]), run="new")
    untouched = state.alpha[3]
    apply_step(state, ev([0], [1.0]), run="new")
    # Only "new" shares now: a full (1 - lambda) decay per step again.
    assert math.isclose(state.alpha[3], 0.9 * untouched + 0.1, rel_tol=1e-12)


def two_runs(cfg: PoolConfig, rounds: int = 6) -> PoolState:
    """Runs "weak" (rates = the weak references) and "strong" (= the strong ones)."""
    state = pool(cfg)
    for _ in range(rounds):
        apply_step(state, ev([0, 1, 2], [0.0, 0.8, 1.6]), run="weak")
        apply_step(state, ev([0, 1, 2], [3.2, 4.0, 4.8]), run="strong")
    return state


def test_run_offsets_are_residuals_against_the_pool_centred_on_the_runs():
    cfg = PoolConfig(forgetting=0.1, implicit_weight=0.0)
    state = two_runs(cfg)
    weak = run_offset(state.runs, "weak", state.steps_applied)
    strong = run_offset(state.runs, "strong", state.steps_applied)
    assert weak is not None and strong is not None
    assert weak < -0.05 and strong > 0.05 and weak + strong == pytest.approx(0.0)
    alone = pool(cfg)
    for _ in range(6):
        apply_step(alone, ev([0, 1, 2], [3.2, 4.0, 4.8]), run="strong")
    assert run_offset(alone.runs, "strong", alone.steps_applied) is None  # one run: no move


def test_a_runs_rates_are_moved_by_its_offset_before_they_count():
    cfg = PoolConfig(forgetting=0.0, implicit_weight=0.0)
    state = two_runs(cfg)
    delta = run_offset(state.runs, "weak", state.steps_applied)
    assert delta is not None
    a0, b0 = state.alpha[4], state.beta[4]
    apply_step(state, ev([4], [4.0]), run="weak")  # rate 0.5 on a task with gap 0.4
    moved = min(1.0, max(0.0, 0.5 - 0.4 * delta))
    assert state.alpha[4] - a0 == pytest.approx(moved * 8)
    assert state.beta[4] - b0 == pytest.approx((1 - moved) * 8)


def test_draws_are_moved_to_the_runs_own_view_before_the_target():
    cfg = PoolConfig(forgetting=0.0, implicit_weight=0.0, mode=SelectionMode.GREEDY)
    state = two_runs(cfg)
    move = run_offset(state.runs, "strong", state.steps_applied)
    assert move is not None and move > 0
    picked = select_batch(state, 3, 0, "strong")
    # For the strong run every task is easier by gap * delta_r (gaps are 0.4 here): the
    # scores it is selected by are the moved ones.
    moved = np.clip(state.posterior_mean()[picked.indices] + 0.4 * move, 0, 1)
    np.testing.assert_allclose(picked.sampled, moved)
    same = select_batch(state, 3, 0, "someone-new")  # not sharing yet: the pool's own view
    np.testing.assert_allclose(same.sampled, state.posterior_mean()[same.indices])

"""Steps folded into ``PoolState.lazy`` equal Eq. 1 applied to every task, and cost O(batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import (
    InterpolationEstimator,
    Lazy,
    PoolConfig,
    PoolState,
    aggregate,
    apply_step,
    select_batch,
)
from bots_core._select import _lazy_inputs, seed_sequence, thompson_candidates
from bots_core._update import LAZY_STEPS


class EagerEstimator(InterpolationEstimator):
    """The default estimator as another object: every step takes the whole-array path."""


def make_pool(n: int, cfg: PoolConfig, seed: int, start: int = 0) -> PoolState:
    state = PoolState("p", cfg)
    grow(state, n, seed, start)
    return state


def grow(state: PoolState, n: int, seed: int, start: int) -> None:
    rng = np.random.default_rng(seed)
    weak = rng.uniform(0.0, 0.3, n)
    strong = weak + rng.uniform(0.4, 0.6, n)  # batches at rate 0.45: mu~ stays in [0, 1]
    gone = rng.random(n) < 0.2
    weak[gone] = strong[gone] = math.nan
    state.extend_columns(
        [f"t{i}" for i in range(start, start + n)],
        weak,
        strong,
        rng.uniform(0.5, 3.0, n),
        rng.uniform(0.5, 3.0, n),
    )


def steps(
    rng: np.random.Generator, n: int, count: int, rate: float = 0.45
) -> list[list[tuple[str, float, float]]]:
    out = []
    for _ in range(count):
        picked = rng.choice(n, size=min(n, 9), replace=False)
        out.append([(f"t{i}", float(rng.binomial(8, rate)), 8.0) for i in picked])
    return out


@pytest.mark.parametrize("forgetting", [0.0, 0.1, 0.9])
@pytest.mark.parametrize("rate", [0.45, 0.05, 0.99])
def test_many_lazy_steps_with_growth_and_runs_match_whole_array_steps(forgetting, rate):
    """Rates 0.05 and 0.99 push mu~ out of [0, 1], so the estimates of some tasks clip."""
    cfg = PoolConfig(forgetting=forgetting, implicit_weight=0.3, pseudo_rollouts=8)
    lazy, eager = make_pool(300, cfg, 1), make_pool(300, cfg, 1)
    rng = np.random.default_rng(2)
    runs = ["a", "b", "c"]
    caps = []
    for i, outcomes in enumerate(steps(rng, 300, 3 * LAZY_STEPS + 5, rate)):
        if i == LAZY_STEPS + 3:  # the pool grows while steps are pending
            assert not lazy.lazy.identity
            grow(lazy, 50, 3, 300)
            grow(eager, 50, 3, 300)
        run = runs[i % 3] if i > LAZY_STEPS // 2 else ""
        apply_step(lazy, aggregate(lazy, outcomes), run=run)
        apply_step(eager, aggregate(eager, outcomes), EagerEstimator(), run=run)
        assert eager.lazy.identity
        assert lazy.capability == eager.capability
        caps.append(lazy.capability)
        np.testing.assert_allclose(lazy.alpha, eager.alpha, rtol=1e-11, atol=0)
        np.testing.assert_allclose(lazy.beta, eager.beta, rtol=1e-11, atol=0)
    assert (min(caps) < 0.0 or max(caps) > 1.0) == (rate != 0.45)


def test_new_tasks_added_while_steps_are_pending_start_at_their_prior():
    state = make_pool(50, PoolConfig(forgetting=0.2, implicit_weight=0.5), 4)
    for outcomes in steps(np.random.default_rng(5), 50, 5):
        apply_step(state, aggregate(state, outcomes))
    assert not state.lazy.identity
    grow(state, 10, 6, 50)
    np.testing.assert_allclose(state.alpha[50:], state.alpha0[50:], rtol=1e-12)
    np.testing.assert_allclose(state.beta[50:], state.beta0[50:], rtol=1e-12)


def test_a_folded_step_writes_only_its_batch():
    state = make_pool(1000, PoolConfig(), 7)
    rng = np.random.default_rng(8)
    for outcomes in steps(rng, 1000, 3):
        apply_step(state, aggregate(state, outcomes))
    before_a, before_b = state.stored_alpha.copy(), state.stored_beta.copy()
    (outcomes,) = steps(rng, 1000, 1)
    ev = aggregate(state, outcomes)
    apply_step(state, ev)
    assert 0.0 <= state.capability <= 1.0
    changed = np.flatnonzero((state.stored_alpha != before_a) | (state.stored_beta != before_b))
    assert set(changed.tolist()) <= set(ev.indices.tolist())
    assert len(changed) > 0
    assert state.lazy.steps == 4


def test_columns_are_written_whole_at_fixed_steps():
    state = make_pool(40, PoolConfig(), 9)
    seen = []
    for outcomes in steps(np.random.default_rng(10), 40, 2 * LAZY_STEPS + 1):
        apply_step(state, aggregate(state, outcomes))
        seen.append(state.lazy.steps)
    # Written whole at the start of steps LAZY_STEPS + 1 and 2 LAZY_STEPS + 1: a function
    # of the step count, never of when anyone looked at the pool.
    assert seen[LAZY_STEPS - 1] == LAZY_STEPS and seen[LAZY_STEPS] == 1
    assert seen[-1] == 1


def test_a_pool_saved_with_pending_steps_continues_bit_for_bit():
    cfg = PoolConfig(forgetting=0.1, implicit_weight=0.2)
    state = make_pool(200, cfg, 11)
    rng = np.random.default_rng(12)
    for outcomes in steps(rng, 200, 20):
        apply_step(state, aggregate(state, outcomes))
    assert not state.lazy.identity
    copy = PoolState.from_bytes(state.to_bytes())
    assert copy.lazy == state.lazy
    for outcomes in steps(rng, 200, LAZY_STEPS):
        apply_step(state, aggregate(state, outcomes))
        apply_step(copy, aggregate(copy, outcomes))
    np.testing.assert_array_equal(copy.stored_alpha, state.stored_alpha)
    np.testing.assert_array_equal(copy.alpha, state.alpha)
    a, b = select_batch(state, 16, 3), select_batch(copy, 16, 3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.sampled, b.sampled)


def test_the_kernel_computes_the_posteriors_bit_for_bit_as_the_engine_does():
    state = make_pool(5000, PoolConfig(), 13)
    for outcomes in steps(np.random.default_rng(14), 5000, 7):
        apply_step(state, aggregate(state, outcomes))
    lazy = _lazy_inputs(state)
    assert lazy is not None
    ss = seed_sequence(1, 2)
    from_stored = thompson_candidates(state.stored_alpha, state.stored_beta, 0.5, 64, ss, lazy=lazy)
    from_posteriors = thompson_candidates(state.alpha, state.beta, 0.5, 64, ss)
    np.testing.assert_array_equal(from_stored[0], from_posteriors[0])
    np.testing.assert_array_equal(from_stored[1][0], from_posteriors[1][0])


def test_posteriors_of_a_pool_with_pending_steps_are_read_only():
    state = make_pool(20, PoolConfig(), 15)
    (outcomes,) = steps(np.random.default_rng(16), 20, 1)
    apply_step(state, aggregate(state, outcomes))
    with pytest.raises(ValueError, match="read-only"):
        state.alpha[0] = 2.0
    state.alpha = np.full(20, 2.0)  # replacing the whole column writes the steps in first
    assert state.lazy.identity
    np.testing.assert_array_equal(state.alpha, 2.0)


def test_a_capability_far_outside_zero_one_takes_the_whole_array_path():
    # Found by hypothesis: one batch with a reference gap of 1e-255 gives mu~ ~ 1e255.
    # Folded, the clipped estimate of task 1 would cancel to alpha = 0; whole-array, it is 2.
    cfg = PoolConfig(
        forgetting=0.0, implicit_weight=1.0, pseudo_rollouts=1.0, momentum=0.0,
        min_reference_gap=0.0,
    )  # fmt: skip
    state, eager = PoolState("p", cfg), PoolState("p", cfg)
    for st in (state, eager):
        st.extend_columns(
            ["k0", "k1", "k2"], np.array([np.nan, 0.0, 0.0]), np.array([np.nan, 1.0, 1e-255]),
            np.ones(3), np.ones(3),
        )  # fmt: skip
    apply_step(state, aggregate(state, [("k2", 1.0, 1.0)]))
    apply_step(eager, aggregate(eager, [("k2", 1.0, 1.0)]), EagerEstimator())
    assert state.capability > 1e250
    np.testing.assert_array_equal(state.alpha, [1.0, 2.0, 2.0])
    np.testing.assert_array_equal(state.alpha, eager.alpha)


def test_tiny_priors_take_the_whole_array_path():
    cfg = PoolConfig()
    state = PoolState("p", cfg)
    state.extend_columns(
        ["a", "b"], np.array([0.1, 0.2]), np.array([0.6, 0.9]), np.full(2, 1e-9), np.ones(2)
    )
    apply_step(state, aggregate(state, [("a", 1.0, 2.0)]))
    assert state.lazy.identity


def test_lazy_numbers_round_trip_and_older_images_read_as_before():
    plain = Lazy(0.5, 0.25, 0.1, 0.2, 3)
    assert len(plain.to_json()) == 5  # what images held before the similarity term
    assert Lazy.from_json(plain.to_json()) == plain
    folded = Lazy(0.5, 0.25, 0.0, 0.0, 3, sim=0.125)
    assert Lazy.from_json(folded.to_json()) == folded
    assert not folded.identity
    with pytest.raises(ValueError):
        Lazy.from_json([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        Lazy.from_json([1.0, 0.0, 0.0, 0.0, 0.0, math.inf])

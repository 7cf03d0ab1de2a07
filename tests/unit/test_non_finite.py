"""The engine never computes on, or writes, a posterior that is not a finite number."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import (
    MAX_TRIALS,
    CorruptStateError,
    Evidence,
    InvalidInputError,
    PoolConfig,
    PoolState,
    aggregate,
    apply_step,
    check_counts,
    select_batch,
)


def pool(n: int = 200_000) -> PoolState:
    state = PoolState("p", PoolConfig())
    state.extend_columns(
        [f"t{i}" for i in range(n)],
        np.full(n, np.nan), np.full(n, np.nan), np.ones(n), np.ones(n),
    )  # fmt: skip
    return state


@pytest.mark.timeout(20)
def test_a_nan_posterior_raises_instead_of_spinning_in_the_sampler():
    state = pool()
    state.beta[123_456] = math.nan
    with pytest.raises(CorruptStateError, match="not a finite"):
        select_batch(state, 8, 0)


def test_evidence_that_would_overflow_a_posterior_is_refused_and_changes_nothing():
    state = pool(10)
    state.alpha[3] = 1.7e308
    before = (state.alpha.copy(), state.beta.copy(), state.steps_applied)
    ev = Evidence(np.array([3]), np.array([1e308]), np.array([1e308]))
    with pytest.raises(CorruptStateError, match="non-finite"):
        apply_step(state, ev)
    assert np.array_equal(state.alpha, before[0]) and np.array_equal(state.beta, before[1])
    assert state.steps_applied == before[2]


def test_counts_beyond_max_trials_are_invalid_input_even_when_they_sum():
    with pytest.raises(InvalidInputError, match="<= 1e"):
        check_counts("t1", 1e308, 1e308)
    state = pool(10)
    check_counts("t1", MAX_TRIALS, MAX_TRIALS)
    summed = aggregate(state, [("t1", 6e11, 6e11), ("t1", 6e11, 6e11)])
    assert summed.trials[0] == 1.2e12  # the runtime refuses sums past MAX_TRIALS per step

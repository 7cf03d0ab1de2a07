"""The fused, blocked update of the default estimator equals the generic plug-in path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import InterpolationEstimator, PoolConfig, PoolState, aggregate, apply_step
from bots_core._update import BLOCK


class SameEstimatorAnotherObject(InterpolationEstimator):
    """The interpolation estimator, but not DEFAULT_ESTIMATOR: forces the generic path."""


def make_pool(n: int, *, missing_refs: bool, uniform_prior: bool, seed: int) -> PoolState:
    rng = np.random.default_rng(seed)
    weak = rng.uniform(0.0, 0.6, n)
    strong = np.minimum(1.0, weak + rng.uniform(0.0, 0.5, n))
    if missing_refs:
        gone = rng.random(n) < 0.2
        weak[gone] = strong[gone] = math.nan
    a0 = np.ones(n) if uniform_prior else rng.uniform(0.5, 3.0, n)
    b0 = np.ones(n) if uniform_prior else rng.uniform(0.5, 3.0, n)
    state = PoolState("p", PoolConfig(forgetting=0.2, implicit_weight=0.3, pseudo_rollouts=8))
    state.extend_columns([f"t{i}" for i in range(n)], weak, strong, a0, b0)
    return state


@pytest.mark.parametrize("missing_refs", [False, True])
@pytest.mark.parametrize("uniform_prior", [False, True])
@pytest.mark.parametrize("n", [10, 2 * BLOCK + 17])
def test_fused_update_matches_the_generic_estimator_path(n, missing_refs, uniform_prior):
    fused = make_pool(n, missing_refs=missing_refs, uniform_prior=uniform_prior, seed=1)
    generic = make_pool(n, missing_refs=missing_refs, uniform_prior=uniform_prior, seed=1)
    other = SameEstimatorAnotherObject()
    rng = np.random.default_rng(2)
    for step in range(6):
        picked = rng.choice(n, size=min(n, 7), replace=False)
        # Late steps push mu~ outside [0, 1], so clipping is exercised too.
        rate = 0.95 if step >= 3 else 0.4
        outcomes = [(f"t{i}", float(rng.binomial(8, rate)), 8.0) for i in picked]
        apply_step(fused, aggregate(fused, outcomes))
        apply_step(generic, aggregate(generic, outcomes), other)
        np.testing.assert_allclose(fused.alpha, generic.alpha, rtol=1e-12, atol=0)
        np.testing.assert_allclose(fused.beta, generic.beta, rtol=1e-12, atol=0)
        assert fused.capability == generic.capability

"""Many steps in one pass (bots_core.apply_steps) equal the same steps one by one."""

from __future__ import annotations

import numpy as np
import pytest
from bots_core import Evidence, PoolConfig, PoolState, TaskSpec, apply_step, apply_steps
from hypothesis import given, settings
from hypothesis import strategies as st


def pool(config: PoolConfig, n: int, seed: int) -> PoolState:
    rng = np.random.default_rng(seed)
    state = PoolState("p", config)
    specs = []
    for k in range(n):
        prior = (float(rng.uniform(0.5, 3)), float(rng.uniform(0.5, 3)))
        if k % 3:  # a third of the tasks have no reference rates
            w = float(rng.uniform(0, 0.6))
            specs.append(TaskSpec(f"t{k}", w, min(1.0, w + float(rng.uniform(0, 0.4))), *prior))
        else:
            specs.append(TaskSpec(f"t{k}", prior_alpha=prior[0], prior_beta=prior[1]))
    state.add_tasks(specs)
    return state


def steps(n: int, count: int, runs: int, seed: int) -> list[tuple[Evidence, str]]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for j in range(count):
        idx = np.sort(rng.choice(n, size=int(rng.integers(1, 8)), replace=False)).astype(np.int64)
        t = rng.choice([4.0, 8.0, 16.0], size=len(idx))
        s = np.floor(rng.uniform(0, 1, len(idx)) * (t + 1)).clip(0, t)
        out.append((Evidence(idx, s, t), f"run-{j % runs}"))
    return out


@settings(max_examples=40, deadline=None)
@given(
    forgetting=st.sampled_from([0.0, 0.1, 0.3]),
    implicit=st.sampled_from([0.0, 0.1, 0.5]),
    runs=st.integers(1, 3),
    count=st.integers(1, 70),
    seed=st.integers(0, 10_000),
)
def test_one_pass_equals_the_steps_one_by_one(forgetting, implicit, runs, count, seed):
    cfg = PoolConfig(forgetting=forgetting, implicit_weight=implicit)
    one_by_one, batched = pool(cfg, 40, seed), pool(cfg, 40, seed)
    plan = steps(40, count, runs, seed)
    expected = [apply_step(one_by_one, ev, run=run) for ev, run in plan]
    got = apply_steps(batched, plan)
    np.testing.assert_allclose(batched.alpha, one_by_one.alpha, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(batched.beta, one_by_one.beta, rtol=1e-11, atol=1e-11)
    assert [r.evaluated for r in got] == [r.evaluated for r in expected]
    assert batched.capability == pytest.approx(one_by_one.capability, nan_ok=True)
    assert batched.steps_applied == one_by_one.steps_applied == count
    for run, rs in one_by_one.runs.items():
        assert batched.runs[run].steps == rs.steps
        assert batched.runs[run].s_ge == pytest.approx(rs.s_ge, rel=1e-9, abs=1e-12)


def test_a_capability_outside_0_1_is_applied_with_clipping():
    cfg = PoolConfig(forgetting=0.1, implicit_weight=0.3, momentum=0.0)
    one_by_one, batched = pool(cfg, 30, 3), pool(cfg, 30, 3)
    # Rates above the strong references push mu~ above 1: p~ must be clipped.
    hot = [(Evidence(np.array([1, 2, 4]), np.array([8.0, 8.0, 8.0]), np.full(3, 8.0)), "")] * 5
    for ev, run in hot:
        apply_step(one_by_one, ev, run=run)
    apply_steps(batched, hot)
    assert one_by_one.capability > 1.0
    np.testing.assert_allclose(batched.alpha, one_by_one.alpha, rtol=1e-11)
    np.testing.assert_allclose(batched.beta, one_by_one.beta, rtol=1e-11)

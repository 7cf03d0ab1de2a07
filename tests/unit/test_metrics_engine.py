"""Engine diagnostics behind the metrics: pass-rate ratios and implicit-estimator quality."""

from __future__ import annotations

import itertools
import json
import math
import struct

import numpy as np
import pytest
from bots_core import (
    QUALITY_WINDOW,
    RATIO_WINDOW,
    Diagnostics,
    PoolConfig,
    PoolState,
    TaskSpec,
    aggregate,
    apply_step,
)
from bots_core._diagnostics import pearson, weighted_auc
from bots_core._state import _MAGIC
from bots_server._model import POSTERIOR_MEAN_BUCKETS, engine_stats
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats


def referenced_pool(n: int = 6) -> PoolState:
    state = PoolState("p", PoolConfig(momentum=0.5))
    state.add_tasks(
        [TaskSpec(f"t{i}", weak=0.1 * i / n, strong=0.5 + 0.5 * i / n) for i in range(n)]
        + [TaskSpec("plain")]
    )
    return state


# ------------------------------------------------------------------ the math


@settings(max_examples=60, deadline=None)
@example([(0.0, 0.0), (0.0, 0.0), (0.125, 5.41748526597323e-160)])  # underflowed once
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(-5, 5)), min_size=3, max_size=40).filter(
        lambda xs: len({x for x, _ in xs}) > 1 and len({y for _, y in xs}) > 1
    )
)
def test_pearson_matches_scipy(points: list[tuple[float, float]]) -> None:
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    expected = stats.pearsonr(x, y).statistic
    assert pearson(x, y) == pytest.approx(expected, abs=1e-9)


def test_pearson_is_nan_for_too_few_or_constant_points() -> None:
    assert math.isnan(pearson(np.array([0.5]), np.array([1.0])))
    assert math.isnan(pearson(np.array([0.5, 0.5, 0.5]), np.array([0.0, 1.0, 0.5])))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),  # scores with ties
            st.integers(0, 5),
            st.integers(0, 5),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_auc_equals_the_pairwise_definition(
    examples: list[tuple[float, int, int]],
) -> None:
    score = np.array([e[0] for e in examples])
    pos = np.array([float(e[1]) for e in examples])
    neg = np.array([float(e[2]) for e in examples])
    got = weighted_auc(score, pos, neg)
    if pos.sum() == 0 or neg.sum() == 0:
        assert math.isnan(got)
        return
    wins = 0.0
    for (si, pi, _), (sj, _, nj) in itertools.product(examples, examples):
        if si > sj:
            wins += pi * nj
        elif si == sj:
            wins += 0.5 * pi * nj
    assert got == pytest.approx(wins / (pos.sum() * neg.sum()), abs=1e-12)


def test_perfect_estimates_score_auc_one_and_reversed_ones_zero() -> None:
    d = Diagnostics()
    d.record_pairs(np.array([0.1, 0.9]), np.array([0.0, 1.0]), np.array([4.0, 4.0]))
    assert d.estimator_roc_auc() == 1.0
    assert d.estimator_pearson() == pytest.approx(1.0)
    r = Diagnostics()
    r.record_pairs(np.array([0.9, 0.1]), np.array([0.0, 1.0]), np.array([4.0, 4.0]))
    assert r.estimator_roc_auc() == 0.0
    assert r.estimator_pearson() == pytest.approx(-1.0)


# ------------------------------------------------------------ apply_step


def test_first_step_records_no_pair_because_mu_is_still_unknown() -> None:
    state = referenced_pool()
    apply_step(state, aggregate(state, [("t0", 1, 4), ("t3", 3, 4)]))
    assert not math.isnan(state.capability)
    assert len(state.diagnostics.pairs) == 0


def test_pairs_use_the_capability_from_before_the_step() -> None:
    state = referenced_pool()
    apply_step(state, aggregate(state, [("t1", 1, 4), ("t4", 3, 4)]))
    mu_before = state.capability
    apply_step(state, aggregate(state, [("t2", 2, 8), ("t5", 8, 8), ("plain", 1, 2)]))
    assert state.capability != mu_before  # the step moved mu~ ...
    pairs = list(state.diagnostics.pairs)
    assert len(pairs) == 2  # ... "plain" has no reference rates, so no p~
    for (p, r, t), (i, s, trials) in zip(pairs, [(2, 2, 8), (5, 8, 8)], strict=True):
        w, g = state.weak[i], state.strong[i]
        assert p == pytest.approx(min(1.0, max(0.0, w + mu_before * (g - w))))  # ... but p~ not
        assert (r, t) == (s / trials, trials)


def test_pass_rate_ratios_of_last_and_recent_steps() -> None:
    state = referenced_pool()
    apply_step(state, aggregate(state, [("t0", 0, 4), ("t1", 4, 4), ("t2", 2, 4), ("t3", 1, 4)]))
    d = state.diagnostics
    assert (d.last_positive_ratio, d.last_below_one_ratio) == (0.75, 0.75)
    apply_step(state, aggregate(state, [("t0", 0, 4), ("t1", 0, 4)]))
    assert (d.last_positive_ratio, d.last_below_one_ratio) == (0.0, 1.0)
    assert d.rolling_positive_ratio == pytest.approx(0.375)
    assert d.rolling_below_one_ratio == pytest.approx(0.875)
    apply_step(state, aggregate(state, []))  # a step that evaluated nothing changes nothing
    assert len(d.ratios) == 2


def test_windows_keep_only_the_most_recent_entries() -> None:
    d = Diagnostics()
    for i in range(RATIO_WINDOW + 5):
        d.record_ratios(i / 1000, 1.0)
    for i in range(QUALITY_WINDOW // 2 + 10):
        d.record_pairs(np.array([0.5, 0.25]), np.array([1.0, 0.0]), np.array([1.0, float(i)]))
    assert len(d.ratios) == RATIO_WINDOW and d.ratios[0][0] == 5 / 1000
    assert len(d.pairs) == QUALITY_WINDOW and d.pairs[-1][2] == QUALITY_WINDOW // 2 + 9


# -------------------------------------------------------------- persistence


def test_diagnostics_survive_the_bytes_round_trip_exactly() -> None:
    state = referenced_pool()
    for step in range(6):
        apply_step(state, aggregate(state, [(f"t{step}", step % 3, 3), ("t5", 1, 3)]))
    data = state.to_bytes()
    restored = PoolState.from_bytes(data)
    assert list(restored.diagnostics.pairs) == list(state.diagnostics.pairs)
    assert list(restored.diagnostics.ratios) == list(state.diagnostics.ratios)
    assert restored.to_bytes() == data
    assert len(state.diagnostics.pairs) > 0


def test_pools_serialised_before_diagnostics_load_with_empty_ones() -> None:
    state = referenced_pool()
    apply_step(state, aggregate(state, [("t1", 1, 4)]))
    data = state.to_bytes()
    (hlen,) = struct.unpack_from("<Q", data, len(_MAGIC))
    start = len(_MAGIC) + 8
    header = json.loads(data[start : start + hlen])
    del header["diagnostics"]
    old = json.dumps(header, separators=(",", ":")).encode()
    legacy = _MAGIC + struct.pack("<Q", len(old)) + old + data[start + hlen :]
    restored = PoolState.from_bytes(legacy)
    assert restored.steps_applied == 1
    assert len(restored.diagnostics.ratios) == 0 and len(restored.diagnostics.pairs) == 0


# -------------------------------------------------------------- pool stats


def test_posterior_mean_histogram_counts_each_task_in_its_le_bucket() -> None:
    state = PoolState("p", PoolConfig())
    state.add_tasks([TaskSpec(f"t{i}") for i in range(5)])
    # means: 0.1 (on a bound: belongs to le=0.1), 0.5, 0.55, 0.95, 1/3
    state.alpha[:] = [1.0, 1.0, 11.0, 19.0, 1.0]
    state.beta[:] = [9.0, 1.0, 9.0, 1.0, 2.0]
    s = engine_stats(state)
    counts = dict(zip(POSTERIOR_MEAN_BUCKETS, s["posterior_mean_counts"], strict=True))
    assert counts == {
        0.1: 1, 0.2: 0, 0.3: 0, 0.4: 1, 0.5: 1, 0.6: 1, 0.7: 0, 0.8: 0, 0.9: 0, 1.0: 1,
    }  # fmt: skip
    assert s["mean_posterior"] == pytest.approx(np.mean([0.1, 0.5, 0.55, 0.95, 1 / 3]))


def test_empty_pool_stats_have_nan_means_and_zero_counts() -> None:
    s = engine_stats(PoolState("p", PoolConfig()))
    assert math.isnan(s["mean_posterior"]) and math.isnan(s["estimator_roc_auc"])
    assert s["posterior_mean_counts"] == (0,) * len(POSTERIOR_MEAN_BUCKETS)
    assert s["estimator_pairs"] == 0

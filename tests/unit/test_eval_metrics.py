"""Metrics of the simulation harness: ROC AUC, Pearson, ETR, TTB, BSF, intervals."""

from __future__ import annotations

import itertools
import math

import bots_eval
import numpy as np
import pytest
from bots_eval import (
    best_so_far_ratio,
    effective_task_ratio,
    mean_ci,
    pearson,
    roc_auc,
    step_ratios,
    steps_to_reach,
    time_to_baseline,
)
from bots_eval._metrics import average_ranks, curve_ci, rolling_mean, t_quantile_975
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats


def brute_force_auc(scores: list[float], labels: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


# Few distinct values, so that ties are common.
tied_scores = st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=2, max_size=40)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), scores=tied_scores)
def test_roc_auc_equals_the_brute_force_pair_count(
    data: st.DataObject, scores: list[float]
) -> None:
    labels = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    if all(labels) or not any(labels):
        assert math.isnan(roc_auc(scores, labels))
        return
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False), min_size=2, max_size=30
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_roc_auc_matches_brute_force_on_continuous_scores(scores: list[float], seed: int) -> None:
    labels = list(np.random.default_rng(seed).random(len(scores)) < 0.5)
    labels[0], labels[1] = True, False
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_roc_auc_of_perfect_reversed_and_constant_scores() -> None:
    labels = [False, False, True, True]
    assert roc_auc([0.1, 0.2, 0.3, 0.4], labels) == 1.0
    assert roc_auc([0.4, 0.3, 0.2, 0.1], labels) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5


def test_roc_auc_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0.1, 0.2], [True])


def test_average_ranks_share_the_mean_rank_of_a_tie() -> None:
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks([]).tolist() == []


@settings(max_examples=100, deadline=None)
@given(
    xs=st.lists(st.floats(-100, 100, allow_nan=False), min_size=3, max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_pearson_matches_numpy(xs: list[float], seed: int) -> None:
    x = np.array(xs)
    y = 0.5 * x + np.random.default_rng(seed).normal(size=len(x))
    if np.ptp(x) < 1e-6:
        return
    assert pearson(x, y) == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-9)


def test_pearson_is_nan_for_constant_or_too_short_input() -> None:
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(pearson([1.0], [2.0]))


def test_step_ratios_count_strictly_mixed_groups() -> None:
    # 0/16 (all fail), 3/16 (mixed), 16/16 (all pass), 8/16 (mixed).
    r = step_ratios([0, 3, 16, 8], [16, 16, 16, 16])
    assert (r.effective, r.positive, r.below_one) == (0.5, 0.75, 0.75)
    assert effective_task_ratio([0, 3, 16, 8], [16, 16, 16, 16]) == 0.5


def test_step_ratios_accept_fractional_counts_and_mixed_trials() -> None:
    r = step_ratios([0.5, 4.0, 8.0], [1.0, 4.0, 16.0])
    assert r.effective == pytest.approx(2 / 3)
    assert r.below_one == pytest.approx(2 / 3)
    assert r.positive == 1.0


def test_step_ratios_of_an_empty_step_are_nan() -> None:
    r = step_ratios([], [])
    assert math.isnan(r.effective) and math.isnan(r.positive) and math.isnan(r.below_one)


# Hand-made curves: performance after 0..10 steps.
BASELINE = np.arange(11.0)  # reaches k after k steps
TWICE_AS_FAST = np.minimum(2 * BASELINE, 10.0)


def test_ttb_of_a_method_twice_as_fast_is_one_half() -> None:
    for x in (0.2, 0.4, 0.6, 1.0):
        assert time_to_baseline(TWICE_AS_FAST, BASELINE, x) == pytest.approx(0.5)
    # Half of 5 steps is not a whole step: reaching 5 takes 3 steps.
    assert time_to_baseline(TWICE_AS_FAST, BASELINE, 0.5) == pytest.approx(3 / 5)


def test_ttb_of_the_baseline_itself_is_one() -> None:
    for x in (0.1, 0.3, 0.5, 1.0):
        assert time_to_baseline(BASELINE, BASELINE, x) == 1.0


def test_ttb_uses_the_baselines_best_so_far_and_is_inf_when_never_reached() -> None:
    bumpy = np.array([0.0, 0.6, 0.4, 0.5, 0.5])  # best within 2 steps: 0.6
    method = np.array([0.0, 0.1, 0.2, 0.3, 0.65])
    assert time_to_baseline(method, bumpy, 0.5) == pytest.approx(4 / 2)
    assert time_to_baseline(np.zeros(5), bumpy, 0.5) == math.inf


def test_ttb_rounds_the_budget_share_up_to_whole_steps() -> None:
    # 25 % of 10 steps is 2.5 steps -> the baseline's value after 3 steps (3),
    # which the method reaches after 2 steps.
    assert time_to_baseline(TWICE_AS_FAST, BASELINE, 0.25) == pytest.approx(2 / 3)


def test_bsf_compares_best_values_within_the_budget_share() -> None:
    assert best_so_far_ratio(TWICE_AS_FAST, BASELINE, 0.5) == pytest.approx(10.0 / 5.0)
    assert best_so_far_ratio(TWICE_AS_FAST, BASELINE, 1.0) == pytest.approx(1.0)
    dip = np.array([0.5, 0.8, 0.2, 0.2, 0.2])
    assert best_so_far_ratio(dip, np.full(5, 0.4), 1.0) == pytest.approx(2.0)


def test_ttb_and_bsf_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="fraction"):
        time_to_baseline(BASELINE, BASELINE, 0.0)
    with pytest.raises(ValueError, match="length"):
        best_so_far_ratio(BASELINE[:5], BASELINE, 0.5)
    with pytest.raises(ValueError, match="two points"):
        time_to_baseline([1.0], [1.0], 1.0)


def test_steps_to_reach() -> None:
    assert steps_to_reach(BASELINE, 3.5) == 4.0
    assert steps_to_reach(BASELINE, 0.0) == 0.0
    assert steps_to_reach(BASELINE, 20.0) == math.inf


def test_t_quantiles_match_scipy() -> None:
    for df in range(1, 200):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_mean_ci_matches_scipy_and_counts_censored_samples() -> None:
    values = [0.61, 0.64, 0.59, 0.66, 0.62]
    iv = mean_ci([*values, math.inf, math.nan])
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert iv.mean == pytest.approx(np.mean(values))
    assert (iv.low, iv.high) == (pytest.approx(lo, abs=1e-3), pytest.approx(hi, abs=1e-3))
    assert (iv.count, iv.censored) == (5, 1)
    assert "1 never" in iv.format()


def test_mean_ci_of_one_or_no_sample() -> None:
    assert math.isnan(mean_ci([0.5]).half_width)
    assert math.isnan(mean_ci([]).mean)
    assert mean_ci([math.inf]).format() == "never (1)"


def test_curve_ci_and_rolling_mean() -> None:
    mean, half = curve_ci([[0.0, 1.0], [2.0, 3.0]])
    assert mean.tolist() == [1.0, 2.0]
    assert half[0] == pytest.approx(stats.t.ppf(0.975, 1) * 1.0, abs=1e-2)
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


def test_public_names_are_sorted_and_exist() -> None:
    names = bots_eval.__all__
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(bots_eval, name), name

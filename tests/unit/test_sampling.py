"""Statistical tests of the sampler and the selection rules (docs/algorithm.md §4).

Every test uses fixed seeds, so it either always passes or always fails; the
p-value thresholds (1e-3) only decide how large a deviation counts as a bug.
"""

from __future__ import annotations

import collections
import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import bots_core._select as select_module
import numpy as np
import pytest
from bots_core import (
    CorruptStateError,
    InvalidInputError,
    PoolConfig,
    PoolState,
    SelectionMode,
    TaskSpec,
    beta_draws,
    select_batch,
    top_k,
)
from scipy import integrate, stats

P_MIN = 1e-3


def make_pool(n: int, **config: object) -> PoolState:
    state = PoolState("sampling", PoolConfig(**config))  # type: ignore[arg-type]
    state.add_tasks([TaskSpec(f"t{i}") for i in range(n)])
    return state


def binomial_ok(hits: int, trials: int, p: float, z: float = 4.5) -> bool:
    """Whether hits/trials is within z standard errors of p."""
    return abs(hits / trials - p) <= z * math.sqrt(p * (1.0 - p) / trials)


# ----------------------------------------------------------------- beta_draws
def ks_float32(draws: np.ndarray, dist: stats.rv_continuous, ulps: float = 2.0) -> float:
    """Kolmogorov-Smirnov p-value of float32 draws against a continuous law.

    float32 draws take only representable values (many of them exactly 0 or 1
    for small shapes), so the empirical CDF is compared with the band
    [F(v - ulps), F(v + ulps)] that rounding to a few ulps allows. The p-value
    of the continuous case is conservative for such discrete data.
    """
    values, counts = np.unique(draws.astype(np.float32), return_counts=True)
    n = len(draws)
    ecdf_hi = np.cumsum(counts) / n
    ecdf_lo = ecdf_hi - counts / n
    v = values.astype(np.float64)
    spread = ulps * np.spacing(values).astype(np.float64)
    f_lo = dist.cdf(np.clip(v - spread, 0.0, 1.0))
    f_hi = dist.cdf(np.clip(v + spread, 0.0, 1.0))
    # Distance from the empirical CDF (at and just below each value) to the band.
    d = max(
        np.max(np.maximum(ecdf_hi - f_hi, f_lo - ecdf_hi)),
        np.max(np.maximum(ecdf_lo - f_hi, f_lo - ecdf_lo)),
        0.0,
    )
    return float(stats.kstwo.sf(d, n))


SHAPES = [
    (0.05, 0.05),
    (0.05, 2.0),
    (0.3, 0.3),
    (0.3, 500.0),
    (1.0, 1.0),
    (2.0, 8.0),
    (8.0, 2.0),
    (500.0, 500.0),
    (500.0, 20.0),
    (81.0, 81.0),
]


@pytest.mark.parametrize(("a", "b"), SHAPES)
def test_beta_draws_follow_the_beta_distribution(a: float, b: float) -> None:
    n = 20_000
    rng = np.random.default_rng(20251026)
    draws = beta_draws(np.full(n, a), np.full(n, b), rng)
    assert draws.dtype == np.float64
    assert np.all((draws >= 0.0) & (draws <= 1.0))
    assert ks_float32(draws, stats.beta(a, b)) > P_MIN


def test_beta_draws_detect_swapped_shapes() -> None:
    # The KS check above has power: Beta(2, 8) draws are not Beta(8, 2).
    n = 20_000
    draws = beta_draws(np.full(n, 2.0), np.full(n, 8.0), np.random.default_rng(1))
    assert ks_float32(draws, stats.beta(8.0, 2.0)) < 1e-12


def test_beta_draws_mix_shapes_elementwise() -> None:
    n = 10_000
    alpha = np.tile([0.3, 2.0, 500.0], n)
    beta = np.tile([0.3, 8.0, 20.0], n)
    draws = beta_draws(alpha, beta, np.random.default_rng(7))
    for j, (a, b) in enumerate([(0.3, 0.3), (2.0, 8.0), (500.0, 20.0)]):
        assert ks_float32(draws[j::3], stats.beta(a, b)) > P_MIN


def test_beta_draws_with_underflowing_shapes_stay_finite_and_balanced() -> None:
    # Both float32 Gamma draws underflow to 0 for most of these: the fallback
    # redraws them (and must not warn; warnings are errors here).
    n = 20_000
    draws = beta_draws(np.full(n, 1e-3), np.full(n, 1e-3), np.random.default_rng(3))
    assert np.all(np.isfinite(draws))
    assert np.all((draws >= 0.0) & (draws <= 1.0))
    # Beta(1e-3, 1e-3) puts almost all mass at the ends, half at each.
    upper = int(np.count_nonzero(draws > 0.5))
    assert binomial_ok(upper, n, 0.5)


# ------------------------------------------------------- Thompson probability
def exact_first_wins(a0: float, b0: float, a1: float, b1: float, target: float) -> float:
    """P(|p0 - target| < |p1 - target|) for independent p_i ~ Beta(a_i, b_i)."""
    d0, d1 = stats.beta(a0, b0), stats.beta(a1, b1)

    def integrand(p: float) -> float:
        d = abs(p - target)
        farther = d1.cdf(target - d) + d1.sf(target + d)
        return float(d0.pdf(p) * farther)

    value, _ = integrate.quad(integrand, 0.0, 1.0, points=[target], limit=200)
    return float(value)


@pytest.mark.parametrize(
    ("first", "second", "target"),
    [((2.0, 5.0), (6.0, 3.0), 0.5), ((0.5, 0.5), (3.0, 3.0), 0.5), ((4.0, 1.5), (1.0, 1.0), 0.7)],
)
def test_thompson_picks_a_task_with_its_probability_of_being_closest(
    first: tuple[float, float], second: tuple[float, float], target: float
) -> None:
    state = make_pool(2, target=target, seed=11)
    state.alpha[:] = [first[0], second[0]]
    state.beta[:] = [first[1], second[1]]
    p = exact_first_wins(*first, *second, target)
    trials = 2000
    hits = sum(int(select_batch(state, 1, k).indices[0] == 0) for k in range(trials))
    assert binomial_ok(hits, trials, p), (hits / trials, p)


# --------------------------------------------------------------- determinism
@pytest.mark.parametrize("mode", list(SelectionMode))
def test_selection_is_a_function_of_seed_and_selection_number(mode: SelectionMode) -> None:
    state = make_pool(500, mode=mode, seed=123)
    if mode is not SelectionMode.GREEDY:  # greedy draws only among ties: keep all tied
        rng = np.random.default_rng(0)
        state.alpha[:] = rng.uniform(0.5, 20.0, 500)
        state.beta[:] = rng.uniform(0.5, 20.0, 500)
    first = select_batch(state, 16, 7)
    again = select_batch(state, 16, 7)
    assert np.array_equal(first.indices, again.indices)
    assert np.array_equal(first.sampled, again.sampled)

    others = [tuple(select_batch(state, 16, k).indices) for k in range(8)]
    assert len(set(others)) == len(others)

    reseeded = make_pool(500, mode=mode, seed=124)
    reseeded.alpha[:] = state.alpha
    reseeded.beta[:] = state.beta
    assert not np.array_equal(select_batch(reseeded, 16, 7).indices, first.indices)


BIG = 2 * select_module.CHUNK + 1000  # three chunks


@pytest.fixture(scope="module")
def big_pool_bytes() -> bytes:
    """A serialised three-chunk pool (built once; each test restores its own copy)."""
    return make_pool(BIG, seed=5).to_bytes()


@pytest.mark.parametrize("mode", [SelectionMode.THOMPSON, SelectionMode.SOFTMAX])
def test_selection_does_not_depend_on_number_of_threads(
    monkeypatch: pytest.MonkeyPatch, big_pool_bytes: bytes, mode: SelectionMode
) -> None:
    state = PoolState.from_bytes(big_pool_bytes)
    state.config = state.config.replace(mode=mode)
    rng = np.random.default_rng(99)
    state.alpha[:] = rng.uniform(0.5, 30.0, BIG)
    state.beta[:] = rng.uniform(0.5, 30.0, BIG)
    results = []
    for workers in (1, 4):
        with ThreadPoolExecutor(workers) as executor:
            monkeypatch.setattr(select_module, "_executor", executor)
            results.append([select_batch(state, 64, k) for k in range(3)])
    for one, many in zip(*results, strict=True):
        assert np.array_equal(one.indices, many.indices)
        assert np.array_equal(one.sampled, many.sampled)
        assert np.array_equal(one.means, many.means)


def test_thompson_over_several_chunks_finds_the_best_tasks_in_every_chunk(
    big_pool_bytes: bytes,
) -> None:
    state = PoolState.from_bytes(big_pool_bytes)
    state.alpha[:] = 1.0
    state.beta[:] = 1e6  # draws near 0: far from the target 0.5
    planted = [5, select_module.CHUNK - 1, select_module.CHUNK, BIG - 1, BIG - 700]
    state.alpha[planted] = 5e6
    state.beta[planted] = 5e6  # draws within ~1e-3 of 0.5
    for k in range(3):
        chosen = select_batch(state, len(planted), k)
        assert sorted(chosen.indices.tolist()) == sorted(planted)
        assert np.all(np.abs(chosen.sampled - 0.5) < 0.01)


# -------------------------------------------------------------------- greedy
def test_greedy_picks_posterior_means_closest_to_target_best_first() -> None:
    means = np.array([0.1, 0.45, 0.8, 0.52, 0.5, 0.3])
    state = make_pool(6, mode=SelectionMode.GREEDY)
    state.alpha[:] = means * 10.0
    state.beta[:] = (1.0 - means) * 10.0
    for k in range(5):
        chosen = select_batch(state, 3, k)
        assert chosen.indices.tolist() == [4, 3, 1]
        np.testing.assert_allclose(chosen.sampled, means[[4, 3, 1]], rtol=0, atol=1e-12)
        np.testing.assert_allclose(chosen.means, means[[4, 3, 1]], rtol=0, atol=1e-12)


def _ordered_pair_counts(state: PoolState, trials: int) -> list[int]:
    counts: collections.Counter[tuple[int, int]] = collections.Counter()
    for k in range(trials):
        chosen = select_batch(state, 2, k).indices.tolist()
        assert len(set(chosen)) == 2
        counts[(chosen[0], chosen[1])] += 1
    pairs = itertools.permutations(range(state.task_count), 2)
    return [counts[pair] for pair in pairs]


def test_greedy_breaks_ties_uniformly_at_random() -> None:
    state = make_pool(4, mode=SelectionMode.GREEDY, seed=17)  # all tasks at (1, 1): all tie
    counts = _ordered_pair_counts(state, 2400)
    assert sum(counts) == 2400
    assert stats.chisquare(counts).pvalue > P_MIN


@pytest.mark.parametrize("batch_size", [2, 3])
def test_order_of_tied_tasks_within_a_batch_is_random(batch_size: int) -> None:
    # Tasks 0 and 1 tie for best (both are in every batch); their order must
    # still be random, also when the whole pool is selected.
    state = make_pool(3, mode=SelectionMode.GREEDY, seed=4)
    state.alpha[2] = 9.0  # mean 0.9: worst
    first = collections.Counter(
        select_batch(state, batch_size, k).indices.tolist()[0] for k in range(1000)
    )
    assert set(first) == {0, 1}
    assert binomial_ok(first[0], 1000, 0.5)


def test_top_k_breaks_ties_among_the_strictly_best_at_random() -> None:
    dist = np.array([0.0, 0.0, 0.5, 0.5, 0.5])
    rng = np.random.default_rng(6)
    firsts = collections.Counter()
    thirds = collections.Counter()
    for _ in range(1500):
        chosen = top_k(dist, 3, rng).tolist()
        assert sorted(chosen[:2]) == [0, 1]
        firsts[chosen[0]] += 1
        thirds[chosen[2]] += 1
    assert binomial_ok(firsts[0], 1500, 0.5)
    assert stats.chisquare([thirds[i] for i in (2, 3, 4)]).pvalue > P_MIN


def test_greedy_tie_break_keeps_strictly_better_tasks() -> None:
    state = make_pool(6, mode=SelectionMode.GREEDY, seed=3)
    state.alpha[0] = 5.0  # mean 5/6: strictly worse than the five tied tasks
    seen = collections.Counter()
    for k in range(600):
        chosen = select_batch(state, 3, k).indices.tolist()
        assert 0 not in chosen
        seen.update(chosen)
    assert stats.chisquare([seen[i] for i in range(1, 6)]).pvalue > P_MIN


# ----------------------------------------------------------- softmax, uniform
@pytest.mark.parametrize("mode", [SelectionMode.SOFTMAX, SelectionMode.UNIFORM])
@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_softmax_and_uniform_return_distinct_tasks_of_right_count(
    mode: SelectionMode, batch_size: int
) -> None:
    state = make_pool(50, mode=mode, temperature=0.5)
    for k in range(10):
        chosen = select_batch(state, batch_size, k)
        assert len(chosen.indices) == batch_size
        assert len(set(chosen.indices.tolist())) == batch_size
        assert np.all((chosen.indices >= 0) & (chosen.indices < 50))
        assert len(chosen.sampled) == len(chosen.means) == batch_size


def test_softmax_picks_with_softmax_probabilities() -> None:
    # Posteriors so concentrated that the draws are ~0.5 and ~0.3: scores 0 and
    # -0.2, so with tau = 0.1 task 0 is picked with probability 1 / (1 + e^-2).
    state = make_pool(2, mode=SelectionMode.SOFTMAX, temperature=0.1, seed=8)
    state.alpha[:] = [5e6, 3e6]
    state.beta[:] = [5e6, 7e6]
    trials = 2000
    hits = sum(int(select_batch(state, 1, k).indices[0] == 0) for k in range(trials))
    assert binomial_ok(hits, trials, 1.0 / (1.0 + math.exp(-2.0)))


def test_uniform_ignores_posteriors() -> None:
    state = make_pool(4, mode=SelectionMode.UNIFORM, seed=21)
    state.alpha[:] = [1.0, 50.0, 1.0, 1000.0]
    state.beta[:] = [1000.0, 50.0, 1.0, 1.0]
    counts = _ordered_pair_counts(state, 2400)
    assert stats.chisquare(counts).pvalue > P_MIN


# ------------------------------------------------------------------ batch size
@pytest.mark.parametrize("mode", list(SelectionMode))
@pytest.mark.parametrize("batch_size", [0, -1, 6, 100])
def test_batch_size_outside_pool_is_rejected(mode: SelectionMode, batch_size: int) -> None:
    state = make_pool(5, mode=mode)
    with pytest.raises(InvalidInputError, match="batch_size"):
        select_batch(state, batch_size, 0)


def test_whole_pool_can_be_selected_once_each() -> None:
    state = make_pool(5)
    assert sorted(select_batch(state, 5, 0).indices.tolist()) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------ the kernel itself
def test_kernel_normals_and_gammas_follow_their_laws() -> None:
    from bots_core import _kernel

    seed = np.random.SeedSequence(31).generate_state(4, np.uint64)
    assert stats.kstest(_kernel.normals(seed, 200_000), "norm").pvalue > P_MIN
    # Tails: the ziggurat's base strip and the tail beyond 3.65 are hit as often as they should.
    z = _kernel.normals(seed, 2_000_000)
    assert binomial_ok(int(np.count_nonzero(np.abs(z) > 3.6541528853610088)), len(z), 2.58e-4)
    for shape in (0.01, 0.3, 1.0, 2.5, 40.0, 1e6):
        g = _kernel.gammas(seed, np.full(50_000, shape))
        assert stats.kstest(g, stats.gamma(shape).cdf).pvalue > P_MIN, shape


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
@pytest.mark.parametrize("mode", [SelectionMode.THOMPSON, SelectionMode.SOFTMAX])
def test_a_posterior_that_is_not_a_positive_number_raises_instead_of_looping(
    bad: float, mode: SelectionMode
) -> None:
    state = make_pool(BIG, mode=mode)
    state.alpha[BIG - 3] = bad
    with pytest.raises(CorruptStateError):
        select_batch(state, 8, 0)
    with pytest.raises(CorruptStateError):
        beta_draws(np.array([1.0, bad]), np.array([1.0, 1.0]), np.random.default_rng(0))


def test_thompson_candidates_keep_every_task_tied_at_the_cut() -> None:
    # Shapes of 1e300 make every draw exactly 0.5 (key 0): each chunk's heap
    # keeps k of them, but every tied task must reach the random tie-break.
    n = 2 * select_module.CHUNK + 10
    state = make_pool(n, seed=2)
    state.alpha[:] = 1e300
    state.beta[:] = 1e300
    idx, (draws, keys) = select_module.thompson_candidates(
        state.alpha, state.beta, 0.5, 4, np.random.SeedSequence(5)
    )
    assert np.array_equal(idx, np.arange(n))
    assert np.all(draws == 0.5) and np.all(keys == 0.0)
    picked = np.concatenate([select_batch(state, 4, k).indices for k in range(300)])
    per_chunk = np.bincount(picked // select_module.CHUNK, minlength=3)
    share = select_module.CHUNK / n
    assert binomial_ok(int(per_chunk[0]), len(picked), share)
    assert binomial_ok(int(per_chunk[1]), len(picked), share)

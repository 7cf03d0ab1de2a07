"""The similarity plug-in: estimates, confidence, bounded pseudo-counts, O(B k) sums, neighbours."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import Evidence, InvalidInputError, PoolConfig, PoolState, apply_step
from bots_core import _similarity as similarity_module
from bots_core._neighbours import NeighbourGraph, exact_neighbours, knn_graph, pca, quantize_int8
from bots_core._similarity import CombinedEstimator, SimilarityEstimator
from hypothesis import given, settings
from hypothesis import strategies as st


def make_pool(n: int, config: PoolConfig | None = None, refs: bool = False) -> PoolState:
    state = PoolState("p", config or PoolConfig(forgetting=0.1, implicit_weight=0.5))
    weak = np.linspace(0.1, 0.5, n) if refs else np.full(n, math.nan)
    strong = np.minimum(1.0, weak + 0.3) if refs else np.full(n, math.nan)
    state.extend_columns([f"t{i}" for i in range(n)], weak, strong, np.ones(n), np.ones(n))
    return state


def ev(idx: list[int], s: list[float], t: list[float]) -> Evidence:
    order = np.argsort(idx)
    return Evidence(
        np.asarray(idx, np.int64)[order], np.asarray(s, float)[order], np.asarray(t, float)[order]
    )


def generic_weighted(state: PoolState, evidence: Evidence, est: SimilarityEstimator) -> None:
    """The generic path of apply_step with per-task weights, written out (no run sharing)."""
    cfg = state.config
    lam, w = cfg.forgetting, cfg.implicit_weight * cfg.pseudo_rollouts
    idx, s, t = evidence.indices, evidence.successes, evidence.trials
    new_a = (1 - lam) * state.alpha[idx] + lam * state.alpha0[idx] + s
    new_b = (1 - lam) * state.beta[idx] + lam * state.beta0[idx] + (t - s)
    est.observe(state, evidence)
    state.alpha = (1 - lam) * state.alpha + lam * state.alpha0
    state.beta = (1 - lam) * state.beta + lam * state.beta0
    out = est.estimate(state)
    if out is not None:
        p, weight = out
        state.alpha = state.alpha + w * weight * p
        state.beta = state.beta + w * weight * (1 - p)
    state.alpha[idx], state.beta[idx] = new_a, new_b
    state.steps_applied += 1


# Two families on a line: 0-2 near 0, 3-5 near 10; task 6 far from both.
LINE = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2], [50.0]], dtype=np.float32)


def line_graph(k: int = 2) -> NeighbourGraph:
    return knn_graph(LINE, k, bandwidth=1.0, exact=True)


def test_a_task_is_predicted_by_its_observed_neighbours_not_by_other_families():
    state = make_pool(7)
    est = SimilarityEstimator(line_graph())
    est.observe(state, ev([0, 1, 3], [16, 12, 0], [16, 16, 16]))
    out = est.estimate(state)
    assert out is not None
    p, conf = out
    # Task 2's neighbours are 1 and 0 (weights exp(-0.01/2), exp(-0.04/2)).
    k1, k0 = math.exp(-0.005), math.exp(-0.02)
    assert p[2] == pytest.approx((k1 * 12 + k0 * 16) / (16 * (k1 + k0)))
    assert p[4] == pytest.approx(0.0)  # neighbours 3 (observed, 0/16) and 5 (not observed)
    assert conf[6] < 1e-6  # far from everything: kernel weight ~0
    assert conf[2] > conf[4] > 0.0  # two observed neighbours against one
    assert np.all((conf >= 0) & (conf <= 1))


def test_an_evaluated_task_is_predicted_mostly_by_its_own_outcomes():
    # Task 1 passed 2/16 itself; its neighbours 0 and 2 passed 16/16.
    state = make_pool(7)
    p_of = {}
    for w in (0.0, 1.0, 8.0, 64.0):
        est = SimilarityEstimator(line_graph(), self_weight=w)
        est.observe(state, ev([0, 1, 2], [16, 2, 16], [16, 16, 16]))
        p_of[w] = float(est.p[1])
    assert p_of[0.0] == pytest.approx(1.0)  # neighbours only
    # The estimate moves from the neighbours' rate to the task's own as its weight grows.
    assert 1.0 > p_of[1.0] > p_of[8.0] > p_of[64.0] > 2 / 16
    k = 2 * math.exp(-0.005)  # kernel weights of neighbours 0 and 2 (distance 0.1)
    assert p_of[64.0] == pytest.approx((64 * 2 + k * 16) / (16 * (64 + k)))


def test_a_task_without_neighbours_keeps_its_own_rate_at_growing_confidence():
    state = make_pool(7)
    est = SimilarityEstimator(line_graph())
    est.observe(state, ev([6], [4], [16]))  # task 6 is far from everything
    out = est.estimate(state)
    assert out is not None
    assert out[0][6] == pytest.approx(0.25)
    assert out[1][6] > 0.9  # 16 own trials at weight 32 against m0 = 16
    assert np.all(out[1][:6] < 1e-6)  # nobody is near task 6


@pytest.mark.parametrize(
    "kwargs", [{"memory": 1.0}, {"memory": -0.1}, {"self_weight": -1.0}, {"self_weight": math.inf}]
)
def test_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(InvalidInputError):
        SimilarityEstimator(line_graph(), **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.5, 0.9, 0.98]),
    st.sampled_from([0.0, 1.0, 32.0, 1e6]),
)
def test_estimates_are_rates_and_confidences_stay_below_one(seed, memory, self_weight):
    rng = np.random.default_rng(seed)
    n = 40
    g = knn_graph(rng.normal(size=(n, 2)).astype(np.float32), 5, exact=True)
    state = make_pool(n)
    est = SimilarityEstimator(g, memory=memory, self_weight=self_weight)
    for step in range(int(rng.integers(1, 12))):
        state.steps_applied = step
        b = int(rng.integers(1, 10))
        idx = np.sort(rng.choice(n, b, replace=False))
        t = rng.integers(1, 33, b).astype(float)
        est.observe(state, Evidence(idx, np.floor(rng.random(b) * (t + 1)), t))
        out = est.estimate(state)
        assert out is not None
        p, c = out
        assert np.all((p >= 0.0) & (p <= 1.0))
        assert np.all((c >= 0.0) & (c < 1.0))


def test_nothing_is_estimated_before_the_first_observation():
    assert SimilarityEstimator(line_graph()).estimate(make_pool(7)) is None


def test_confidence_shrinks_with_distance_staleness_and_few_neighbours():
    pts = np.array([[0.0], [0.1], [0.2], [3.0], [3.1], [3.2]], dtype=np.float32)
    g = knn_graph(pts, 2, bandwidth=1.0, exact=True)
    state = make_pool(6)
    est = SimilarityEstimator(g)
    est.observe(state, ev([0, 1], [8, 8], [16, 16]))
    fresh = est.confidence(state).copy()
    assert fresh[2] > fresh[3]  # both see task 1 (and 2 sees 0 too) but 3 is far
    est2 = SimilarityEstimator(g)
    est2.observe(state, ev([0], [8], [16]))
    assert est2.confidence(state)[2] < fresh[2]  # one observed neighbour instead of two
    state.steps_applied += 5
    stale = est.confidence(state)
    assert stale[2] < fresh[2]
    # At an observation conf = m / (m + m0); then m decays by the estimator's
    # memory per step over the denominator of that observation.
    m = fresh[2] * 16 / (1 - fresh[2])
    assert stale[2] == pytest.approx(m * est.memory**5 / (m + 16))
    assert stale[2] == pytest.approx(fresh[2] * est.memory**5)


def test_pseudo_counts_per_step_are_bounded_by_rho_n():
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=(n, 4)).astype(np.float32)
    cfg = PoolConfig(forgetting=0.0, implicit_weight=0.3, pseudo_rollouts=16)
    state = make_pool(n, cfg)
    est = SimilarityEstimator(knn_graph(x, 8, exact=True), half_mass=1e-3)
    for _ in range(20):
        idx = np.sort(rng.choice(n, 30, replace=False))
        before = state.alpha + state.beta
        apply_step(state, Evidence(idx, rng.binomial(16, 0.5, 30) * 1.0, np.full(30, 16.0)), est)  # fmt: skip
        added = state.alpha + state.beta - before
        out = np.ones(n, bool)
        out[idx] = False
        assert np.all(added[out] >= 0)
        assert np.all(added[out] <= 0.3 * 16 * (1 + 1e-12))


def test_implicit_evidence_never_feeds_the_estimate():
    # The estimate depends on explicit outcomes only: pools that differ in rho agree on p~.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    g = knn_graph(x, 6, exact=True)
    ests = []
    for rho in (0.0, 1.0):
        state = make_pool(80, PoolConfig(implicit_weight=rho))
        est = SimilarityEstimator(g)
        r = np.random.default_rng(2)
        for _ in range(10):
            idx = np.sort(r.choice(80, 8, replace=False))
            apply_step(state, Evidence(idx, r.binomial(16, 0.3, 8) * 1.0, np.full(8, 16.0)), est)  # fmt: skip
        ests.append(est)
    np.testing.assert_array_equal(ests[0].p, ests[1].p)
    np.testing.assert_array_equal(ests[0].sum_t, ests[1].sum_t)


@pytest.mark.parametrize(("memory", "self_weight"), [(0.98, 32.0), (0.9, 0.0), (0.0, 1.0), (0.3, 4.0)])  # fmt: skip
def test_incremental_sums_equal_a_recomputation_from_scratch(memory, self_weight):
    rng = np.random.default_rng(3)
    n, k = 120, 5
    x = rng.normal(size=(n, 3)).astype(np.float32)
    g = knn_graph(x, k, exact=True)
    state = make_pool(n)
    est = SimilarityEstimator(g, memory=memory, self_weight=self_weight)
    history = []
    # Enough steps with gamma = 0.3 to force several rescales of the sums.
    for step in range(500):
        idx = np.sort(rng.choice(n, 7, replace=False))
        e = Evidence(idx, rng.binomial(8, 0.6, 7) * 1.0, np.full(7, 8.0))
        state.steps_applied = step
        est.observe(state, e)
        history.append((step, e))
    s, t = np.zeros(n), np.zeros(n)
    for step, e in history:
        age = len(history) - 1 - step
        f = memory**age if age else 1.0
        for j, sj, tj in zip(e.indices, e.successes, e.trials, strict=True):
            s[j] += self_weight * f * sj  # the task itself
            t[j] += self_weight * f * tj
            for i in range(n):
                hit = np.flatnonzero(g.neighbours[i] == j)
                if len(hit):
                    kw = float(g.weights[i, hit[0]])
                    s[i] += kw * f * sj
                    t[i] += kw * f * tj
    d = est.decay(state)
    np.testing.assert_allclose(est.sum_t * d, t, rtol=1e-9, atol=1e-300)
    ok = t > 1e-250
    np.testing.assert_allclose(est.p[ok], s[ok] / t[ok], rtol=1e-9)


def test_a_step_with_weights_equals_the_generic_path_written_out():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 2)).astype(np.float32)
    g = knn_graph(x, 4, exact=True)
    a, b = make_pool(50), make_pool(50)
    ea, eb = SimilarityEstimator(g), SimilarityEstimator(g)
    for _ in range(8):
        idx = np.sort(rng.choice(50, 6, replace=False))
        e = Evidence(idx, rng.binomial(16, 0.4, 6) * 1.0, np.full(6, 16.0))
        apply_step(a, e, ea)
        generic_weighted(b, e, eb)
        np.testing.assert_allclose(a.alpha, b.alpha, rtol=1e-12)
        np.testing.assert_allclose(a.beta, b.beta, rtol=1e-12)


def test_combined_estimate_lies_between_its_parts_with_reference_weight_one():
    state = make_pool(7, refs=True)
    sim = SimilarityEstimator(line_graph())
    both = CombinedEstimator(sim)
    e = ev([0, 1, 3], [16, 12, 0], [16, 16, 16])
    apply_step(state, e, both)
    out = both.estimate(state)
    ip = both.interpolation.estimate(state)
    sp = sim.estimate(state)
    assert out is not None and ip is not None and sp is not None
    p, weight = out
    lo = np.minimum(ip[0], sp[0]) - 1e-12
    hi = np.maximum(ip[0], sp[0]) + 1e-12
    assert np.all((p >= lo) & (p <= hi))
    np.testing.assert_array_equal(weight, 1.0)  # every task has references here


def test_exact_neighbours_match_brute_force():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    nbr, dist = exact_neighbours(x, 7)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(
        np.sort(nbr, axis=1), np.sort(np.argsort(d, axis=1)[:, :7], axis=1)
    )
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :7], rtol=1e-4)


def test_ann_neighbours_recall_against_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    cent = rng.normal(size=(300, 16))
    x = (cent[rng.integers(0, 300, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    exact = knn_graph(x, 10, exact=True)
    ann = knn_graph(x, 10, exact=False)
    hits = [len(set(a) & set(b)) for a, b in zip(exact.neighbours, ann.neighbours, strict=True)]
    assert np.mean(hits) / 10 > 0.95


def test_reverse_lists_invert_the_neighbour_table():
    g = line_graph()
    for j in range(7):
        _owner, holder, w = g.reverse(np.array([j]))
        expect = {i for i in range(7) if j in g.neighbours[i]}
        assert set(holder.tolist()) == expect
        for i, wi in zip(holder, w, strict=True):
            assert wi == g.weights[i, list(g.neighbours[i]).index(j)]


def test_pca_and_int8_codes_keep_families_together():
    rng = np.random.default_rng(8)
    cent = rng.normal(size=(20, 64))
    family = rng.integers(0, 20, 400)
    x = cent[family] + 0.1 * rng.normal(size=(400, 64))
    low, mean, comps = pca(x, 16)
    assert low.shape == (400, 16) and comps.shape == (16, 64)
    np.testing.assert_allclose(low, (x - mean) @ comps.T, rtol=1e-4, atol=1e-4)
    codes, scale = quantize_int8(low)
    assert codes.dtype == np.int8
    nbr = knn_graph(codes.astype(np.float32) * scale, 5, exact=True).neighbours
    assert np.mean(family[nbr] == family[:, None]) > 0.99


def test_folded_steps_equal_the_generic_path_over_rescales_and_normalizations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool that uses the estimator alone folds its steps (Lazy.sim, O(B k) per step).

    The same steps on the generic whole-array path (``folds`` off) give the
    same posteriors to rounding, across the 128-step rewrites of the columns
    and the sums' rescaling (made to come every 150 steps here).
    """
    monkeypatch.setattr(similarity_module, "RESCALE_AT", 3.0)
    rng = np.random.default_rng(11)
    n = 120
    x = rng.normal(size=(n, 3)).astype(np.float32)
    g = knn_graph(x, 5, exact=True)
    folded, whole = make_pool(n), make_pool(n)
    ef, ew = SimilarityEstimator(g), SimilarityEstimator(g)
    assert ef.folds
    ew.folds = False
    pending = 0
    for step in range(420):
        idx = np.sort(rng.choice(n, 9, replace=False))
        e = Evidence(idx, rng.binomial(16, rng.uniform(0.1, 0.9), 9) * 1.0, np.full(9, 16.0))
        apply_step(folded, e, ef)
        apply_step(whole, e, ew)
        assert whole.lazy.identity  # the generic path writes every task
        pending = max(pending, folded.lazy.steps)
        if step % 20 == 0 or step > 400:
            np.testing.assert_allclose(folded.alpha, whole.alpha, rtol=1e-10)
            np.testing.assert_allclose(folded.beta, whole.beta, rtol=1e-10)
    assert ef.origin > 0  # the sums were rescaled
    assert pending == 128  # steps were folded, and written whole every 128 steps
    assert folded.lazy.sim > 0.0


def test_a_pool_with_folded_similarity_steps_round_trips_through_bytes():
    rng = np.random.default_rng(12)
    n = 60
    g = knn_graph(rng.normal(size=(n, 2)).astype(np.float32), 4, exact=True)
    state = make_pool(n)
    est = SimilarityEstimator(g)
    for _ in range(30):
        idx = np.sort(rng.choice(n, 5, replace=False))
        apply_step(state, Evidence(idx, rng.binomial(8, 0.5, 5) * 1.0, np.full(5, 8.0)), est)
    assert state.lazy.sim > 0.0
    back = PoolState.from_bytes(state.to_bytes())
    np.testing.assert_array_equal(back.alpha, state.alpha)
    np.testing.assert_array_equal(back.beta, state.beta)
    assert back.to_bytes() == state.to_bytes()


def test_a_short_memory_takes_the_whole_array_path():
    g = line_graph()
    assert SimilarityEstimator(g).folds
    assert not SimilarityEstimator(g, memory=0.9).folds  # 0.9^128 < FOLD_MIN_DECAY
    assert not CombinedEstimator(SimilarityEstimator(g)).similarity.folds

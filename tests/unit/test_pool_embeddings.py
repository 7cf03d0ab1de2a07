"""Embeddings a pool stores, and its similarity estimator's state: reduction, codes, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import (
    MAX_EMBEDDING_DIM,
    STORED_DIM,
    EmbeddingBasis,
    Evidence,
    InvalidInputError,
    PoolConfig,
    PoolState,
    apply_step,
    check_embeddings,
    estimator_at,
    graph_of_codes,
    preset,
    restore,
)
from bots_core._similarity import CombinedEstimator, SimilarityEstimator


def embedded_pool(n: int, config: PoolConfig, dim: int = 8, seed: int = 0) -> PoolState:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n // 4 + 1, dim))[np.arange(n) // 4] + 0.3 * rng.normal(size=(n, dim))
    raw = raw.astype(np.float32)
    state = PoolState("p", config)
    basis = EmbeddingBasis.fit(raw)
    state.embedding_basis = basis
    weak = np.linspace(0.1, 0.5, n)
    state.extend_columns(
        [f"t{i}" for i in range(n)], weak, weak + 0.3, np.ones(n), np.ones(n), basis.codes(raw)
    )
    return state


def steps(n: int, count: int, seed: int) -> list[Evidence]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        idx = np.sort(rng.choice(n, 8, replace=False)).astype(np.int64)
        out.append(Evidence(idx, rng.binomial(16, 0.4, 8) * 1.0, np.full(8, 16.0)))
    return out


def test_short_embeddings_are_kept_as_codes_and_long_ones_reduced_by_pca():
    rng = np.random.default_rng(1)
    short = rng.normal(size=(40, 3)).astype(np.float32)
    b = EmbeddingBasis.fit(short)
    assert b.dim == 3 and b.components is None
    codes = b.codes(short)
    assert codes.dtype == np.int8 and int(np.abs(codes).max()) == 127
    np.testing.assert_allclose(codes * b.scale, short, atol=b.scale / 2 + 1e-7)
    long = rng.normal(size=(100, 300)).astype(np.float32)
    b2 = EmbeddingBasis.fit(long)
    assert b2.dim == STORED_DIM and b2.codes(long).shape == (100, STORED_DIM)


@pytest.mark.parametrize("dim", [3, 300])
def test_a_basis_survives_its_bytes(dim):
    raw = np.random.default_rng(2).normal(size=(64, dim)).astype(np.float32)
    b = EmbeddingBasis.fit(raw)
    back = EmbeddingBasis.from_bytes(b.to_bytes())
    np.testing.assert_array_equal(back.codes(raw), b.codes(raw))
    with pytest.raises(InvalidInputError):
        EmbeddingBasis.from_bytes(b.to_bytes() + b"x")


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([[1.0, 2.0], []], "all or none"),
        ([[1.0, 2.0], [1.0]], "one dimension"),
        ([[1.0, math.nan]], "finite"),
        ([[1.0, math.inf]], "finite"),
        ([[1e39]], "float32"),
        ([[0.0] * (MAX_EMBEDDING_DIM + 1)], f"at most {MAX_EMBEDDING_DIM}"),
    ],
)
def test_malformed_embeddings_are_refused_with_the_reason(rows, words):
    with pytest.raises(InvalidInputError, match=words):
        check_embeddings([f"k{i}" for i in range(len(rows))], rows)


def test_tasks_without_embeddings_give_none():
    assert check_embeddings(["a", "b"], [[], []]) is None
    assert check_embeddings([], []) is None


def test_the_graph_of_codes_does_not_depend_on_the_order_of_float_sums():
    """Integer codes make every distance exact, so float64 math agrees with float32 BLAS."""
    codes = np.random.default_rng(3).integers(-127, 128, size=(300, 32)).astype(np.int8)
    g = graph_of_codes(codes, 8)
    c = codes.astype(np.int64)
    d2 = (c[:, None, :] - c[None, :, :]) ** 2
    d2 = d2.sum(axis=2).astype(np.float64)
    np.fill_diagonal(d2, np.inf)
    expected = np.sort(d2, axis=1)[:, :8]
    got = np.take_along_axis(d2, g.neighbours.astype(np.int64), axis=1)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["similarity", "bots+similarity"])
def test_an_estimator_continues_bit_for_bit_from_its_saved_state(name):
    a = embedded_pool(60, preset(name))
    b = embedded_pool(60, preset(name))
    history = steps(60, 12, seed=5)
    ea = estimator_at(a, None)
    eb = estimator_at(b, None)
    assert isinstance(ea, SimilarityEstimator if name == "similarity" else CombinedEstimator)
    for e in history[:6]:
        apply_step(a, e, ea)
        apply_step(b, e, eb)
    assert eb is not None
    saved = eb.to_state()
    eb = restore(b, saved)  # graph rebuilt from the codes, sums and errors from the state
    for e in history[6:]:
        apply_step(a, e, ea)
        apply_step(b, e, eb)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    np.testing.assert_array_equal(a.beta, b.beta)
    assert ea is not None
    sa, sb = ea.to_state(), eb.to_state()
    for f in ("sum_s", "sum_t", "p"):
        np.testing.assert_array_equal(getattr(sa, f), getattr(sb, f))
    assert (sa.mse, sa.combined_mse, sa.origin) == (sb.mse, sb.combined_mse, sb.origin) or (
        math.isnan(sa.mse) and math.isnan(sb.mse)
    )


def test_added_tasks_join_the_graph_at_the_next_step_and_start_without_evidence():
    state = embedded_pool(40, preset("similarity"))
    est = estimator_at(state, None)
    assert est is not None
    for e in steps(40, 3, seed=6):
        apply_step(state, e, est)
    before = est.to_state()
    basis = state.embedding_basis
    assert basis is not None
    extra = np.random.default_rng(9).normal(size=(8, 8)).astype(np.float32)
    nan = np.full(8, math.nan)
    state.extend_columns(
        [f"n{i}" for i in range(8)], nan, nan, np.ones(8), np.ones(8), basis.codes(extra)
    )
    out = est.estimate(state)
    assert out is not None and np.all(out[1][40:] == 0.0)  # not in the graph: no weight
    grown = estimator_at(state, est)
    assert grown is not None and grown is not est
    after = grown.to_state()
    assert after.tasks == 48
    np.testing.assert_array_equal(after.sum_t[:40], before.sum_t)
    np.testing.assert_array_equal(after.sum_t[40:], 0.0)
    assert estimator_at(state, grown) is grown  # covers every task: kept
    apply_step(state, Evidence(np.array([40, 41]), np.array([8.0, 8.0]), np.full(2, 16.0)), grown)


def test_a_pool_with_embeddings_survives_its_bytes():
    state = embedded_pool(20, preset("similarity"))
    back = PoolState.from_bytes(state.to_bytes())
    assert back.embedding_codes is not None and state.embedding_codes is not None
    np.testing.assert_array_equal(back.embedding_codes, state.embedding_codes)
    assert back.to_bytes() == state.to_bytes()


def test_similarity_without_embeddings_is_refused():
    state = PoolState("p", preset("similarity"))
    state.extend_columns(["a", "b"], np.full(2, math.nan), np.full(2, math.nan),
                         np.ones(2), np.ones(2))  # fmt: skip
    with pytest.raises(InvalidInputError, match="needs task embeddings"):
        estimator_at(state, None)


def test_above_the_exact_limit_faiss_builds_one_graph_whatever_the_threads(monkeypatch):
    faiss = pytest.importorskip("faiss")
    import bots_core._pool_estimator as pe

    monkeypatch.setattr(pe, "EXACT_LIMIT", 100)
    rng = np.random.default_rng(8)
    centres = rng.integers(-100, 100, size=(40, 32))
    codes = np.clip(centres[np.arange(600) % 40] + rng.integers(-9, 10, size=(600, 32)), -127, 127)
    codes = codes.astype(np.int8)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        a = pe.graph_of_codes(codes, 8)
        b = pe.graph_of_codes(codes, 8)
        assert faiss.omp_get_max_threads() == 2  # the one-thread build put it back
    finally:
        faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(a.neighbours, b.neighbours)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_a_pool_above_the_exact_limit_needs_faiss(monkeypatch):
    import sys

    from bots_core import check_graph_size

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails
    check_graph_size(10_000)
    with pytest.raises(InvalidInputError, match="needs faiss"):
        check_graph_size(10_001)

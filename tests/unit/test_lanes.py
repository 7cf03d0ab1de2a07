"""The selection kernel's SIMD first pass (bots_core._lanes): accuracy, laws, exactness.

The Beta draws themselves (first pass and fix-ups together) are tested in
test_sampling.py (KS tests, the exact Thompson pick probability).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bots_core import _kernel, _lanes
from scipy import stats
from test_sampling import P_MIN, binomial_ok


def test_the_float32_log_is_accurate_to_a_few_ulps() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(0.0, 1.0, 200_000),
            2.0 ** rng.uniform(-33.0, 30.0, 200_000),
            [2.0**-33, 2.0**-32 + 2.0**-33, math.sqrt(0.5), 1.0, math.sqrt(2.0), 1.5, 2.0],
        ]
    ).astype(np.float32)
    x = x[x > 0]
    exact = np.log(x.astype(np.float64))
    got = _lanes.logs(x).astype(np.float64)
    err = np.abs(got - exact) / np.maximum(np.abs(exact), 1e-300)
    assert np.all((err < 2.5e-7) | (np.abs(got - exact) < 1e-7))


def test_first_pass_normals_follow_the_normal_law_in_the_body_and_tails() -> None:
    z = _lanes.normals(np.uint64(20261129), 1_000_000).astype(np.float64)
    assert stats.kstest(z, "norm").pvalue > P_MIN
    n = len(z)
    for cut in (2.0, 3.0, 4.0):
        p = 2.0 * stats.norm.sf(cut)
        assert binomial_ok(int(np.count_nonzero(np.abs(z) > cut)), n, p), cut
    # The two normals of a pair are independent (their product has mean 0 and
    # the pair's angle is uniform).
    pairs = z.reshape(-1, 2)
    prod = pairs[:, 0] * pairs[:, 1]
    assert abs(prod.mean()) < 4.5 / math.sqrt(len(prod))
    angle = np.arctan2(pairs[:, 1], pairs[:, 0])
    assert stats.kstest(angle, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > P_MIN


SHAPES = [1.0, 1.5, 3.0, 40.0, 1e4, 1e8, 1e20]


@pytest.mark.parametrize("shape", SHAPES)
def test_decided_attempts_agree_with_the_exact_test(shape: float) -> None:
    # Random attempts, and attempts whose u lies within 3e-5 (relative) of the
    # acceptance boundary exp(T), where float32 rounding could flip a verdict.
    rng = np.random.default_rng(int(shape) % 1000 + 7)
    n = 400_000
    x = (rng.standard_normal(n) * rng.choice([1.0, 2.0, 3.0], n)).astype(np.float32)
    shapes = np.full(n, shape)
    d = shape - 1.0 / 3.0
    w = (x / np.float32(math.sqrt(9.0 * np.float32(d)))).astype(np.float64)
    w = np.maximum(w, -0.999999)
    r = np.log1p(w) - w + w**2 / 2 - w**3 / 3
    small = np.abs(w) < 0.01
    r[small] = (-(w**4) / 4 + w**5 / 5 - w**6 / 6 + w**7 / 7)[small]
    boundary = np.exp(3.0 * d * r) * (1.0 + rng.uniform(-3e-5, 3e-5, n))
    for u, open_share in ((rng.uniform(0.0, 1.0, n), 1e-2), (boundary, 1.0)):
        word = np.clip(np.floor(u * 2.0**32 - 0.5), 0, 2**32 - 1).astype(np.uint32)
        squeezed, fast, exact = _lanes.decisions(word, x, shapes)
        assert not np.any(squeezed & ~exact)
        assert not np.any((fast == 0) & ~exact)
        assert not np.any((fast == 2) & exact)
        assert np.mean(fast == 1) <= open_share  # float32 decides nearly all random ones


def test_every_attempt_left_open_by_the_squeeze_is_decided_as_the_exact_test_decides() -> None:
    # Acceptance words of all ones (u just below 1): the squeeze decides
    # nothing, so both Gammas of every lane go through the gathered test.
    m = 1024
    rng = np.random.default_rng(3)
    raw = np.empty(2 * m, dtype=np.uint64)
    _lanes.fill_bits(np.uint64(99), 0, m, raw)
    bits = raw.view(np.uint32).copy()
    bits[2::4] = 0xFFFFFFFF
    bits[3::4] = 0xFFFFFFFF
    a32 = rng.uniform(1.0, 5.0, m).astype(np.float32)
    b32 = rng.uniform(1.0, 5.0, m).astype(np.float32)
    wa, wb = np.empty(m, np.float32), np.empty(m, np.float32)
    flag = np.empty(m, np.uint8)
    lists = (
        np.empty(2 * m, np.int64),
        np.empty(2 * m, np.uint8),
        np.empty(2 * m, np.uint32),
        np.empty(2 * m, np.float32),
        np.empty(2 * m, np.float32),
    )
    _lanes.candidates(a32, b32, bits, wa, wb, flag, m, *lists)
    for j in range(m):
        ok_a = _lanes.mt_accepts(float(a32[j]), wa[j], bits[4 * j + 2])
        ok_b = _lanes.mt_accepts(float(b32[j]), wb[j], bits[4 * j + 3])
        f = int(flag[j])
        if f & _lanes.REJECT:
            assert not (ok_a and ok_b)
        else:
            assert ok_a or f & _lanes.NEED_A
            assert ok_b or f & _lanes.NEED_B
    assert np.mean(flag & _lanes.REJECT > 0) > 0.3  # u near 1 rejects most attempts


@pytest.mark.parametrize(("a", "b"), [(1.0, 40.0), (3.0, 1e6), (1e4, 1e4), (2e5, 5e5)])
def test_beta_draws_of_the_first_pass_follow_the_beta_law(a: float, b: float) -> None:
    n = 50_000
    seed = np.arange(1, 6, dtype=np.uint64)
    draws = _kernel.betas(seed, np.full(n, a), np.full(n, b))
    assert stats.kstest(draws, stats.beta(a, b).cdf).pvalue > P_MIN

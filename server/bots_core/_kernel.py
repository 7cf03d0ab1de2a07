"""Compiled Thompson draw (numba): Beta draws and each chunk's best ``k`` in one pass.

For every task of a chunk the kernel draws p ~ Beta(alpha, beta) as
X / (X + Y) with X ~ Gamma(alpha), Y ~ Gamma(beta), block by block (1,024
tasks):

* **First pass, on SIMD lanes** (``bots_core._lanes``): one Marsaglia-Tsang
  (2000) attempt per Gamma from Box-Muller normals, in branch-free float32
  with counter-based bits (SplitMix64 of the chunk's key and the task's
  index), and X / (X + Y) in float64. Attempts the squeeze leaves open get a
  float32 test with error bounds (tests check it against the exact test
  near the acceptance boundary); those still open (about 3 in 100,000) get
  the exact float64 test.
* **Fix-ups, one by one**: a task whose attempt was rejected (about 1 in 90
  for shapes from 1 to 40), or whose shape is outside [1, 1e30], gets a
  fresh exact draw: Marsaglia-Tsang with normals from a 256-layer ziggurat
  (the construction numpy uses) and bits from xoshiro256** seeded per chunk,
  in task order; shapes below 1 by Gamma(a) = Gamma(a + 1) U^(1/a), in log
  space so tiny shapes cannot underflow. Drawing again after a rejection
  keeps the draw exact (``bots_core._lanes``).
* **Keeping the best k**: a max-heap per chunk. Once it is full, a block's
  keys are computed on the lanes and only the few below the heap's top are
  looked at.

Nothing of the pool's size is allocated. The draw is a pure function of the
chunk's seed, whatever thread runs it; the float32 pass may fuse multiplies
and adds (FMA), so a CPU without FMA draws other last bits.

Measured (``python bench/bench_scale.py``, docs/benchmarks.md): whole engine
select with B = 256 at N = 1M on the 2-core VM against numpy's
``Generator.standard_gamma(dtype=float32)`` per chunk on the same threads
and seeds; the figures are in docs/benchmarks.md. Statistical tests:
tests/unit/test_sampling.py (KS tests of the Betas, the exact Thompson pick
probability; the scalar sampler's normals and Gammas) and
tests/unit/test_lanes.py (the first pass: its log, normals, and that every
attempt it decides is decided as the exact test decides).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import numpy.typing as npt

from bots_core import _lanes

_R = 3.6541528853610088  # where the ziggurat's base strip meets the tail
_V = 0.00492867323399  # the area of each of the 256 layers
_M = float(1 << 52)


def _ziggurat_tables() -> tuple[
    npt.NDArray[np.uint64], npt.NDArray[np.float64], npt.NDArray[np.float64]
]:
    """Layer tables of the standard normal ziggurat for 52-bit magnitudes."""
    ki = np.zeros(256, dtype=np.uint64)
    wi = np.zeros(256)
    fi = np.zeros(256)
    dn = tn = _R
    q = _V / math.exp(-0.5 * dn * dn)
    ki[0] = np.uint64((dn / q) * _M)
    wi[0] = q / _M
    wi[255] = dn / _M
    fi[0] = 1.0
    fi[255] = math.exp(-0.5 * dn * dn)
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(_V / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = np.uint64((dn / tn) * _M)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / _M
    return ki, wi, fi


_KI_U, _WI, _FI = _ziggurat_tables()
_KI = _KI_U.astype(np.int64)  # magnitudes are below 2**52: compare as signed
_U53 = 1.0 / 9007199254740992.0  # 2**-53

_jit = nb.njit(nogil=True, cache=True, error_model="numpy")
# Helpers are inlined at numba IR level: a call that passes arrays costs ~15 ns.
_inline = nb.njit(nogil=True, cache=True, error_model="numpy", inline="always")


State = tuple[np.uint64, np.uint64, np.uint64, np.uint64]


@_inline
def _next(st: State) -> tuple[np.uint64, State]:
    """xoshiro256** (Blackman and Vigna): one 64-bit output and the next state.

    The state travels as a tuple of scalars so that it stays in registers.
    """
    s0, s1, s2, s3 = st
    x = s1 * np.uint64(5)
    x = (x << np.uint64(7)) | (x >> np.uint64(57))
    out = x * np.uint64(9)
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << np.uint64(45)) | (s3 >> np.uint64(19))
    return out, (s0, s1, s2, s3)


@_inline
def _uniform(st: State) -> tuple[float, State]:
    """Uniform on [0, 1) with 53 random bits."""
    r, st = _next(st)
    return float(np.int64(r >> np.uint64(11))) * _U53, st


@_inline
def _normal(st: State) -> tuple[float, State]:
    """A standard normal draw: the ziggurat as in numpy's ``random_standard_normal``."""
    while True:
        r, st = _next(st)
        idx = np.int64(r & np.uint64(0xFF))
        rr = np.int64(r >> np.uint64(8))
        neg = (rr & 1) != 0
        rabs = (rr >> 1) & 0x000FFFFFFFFFFFFF
        x = float(rabs) * _WI[idx]
        if neg:
            x = -x
        if rabs < _KI[idx]:
            return x, st  # inside the layer's rectangle: 98.5 % of draws
        if idx == 0:
            while True:  # the tail beyond _R (Marsaglia, 1964)
                u1, st = _uniform(st)
                u2, st = _uniform(st)
                xx = -math.log1p(-u1) / _R
                yy = -math.log1p(-u2)
                if yy + yy > xx * xx:
                    return (-(_R + xx) if neg else _R + xx), st
        else:
            u, st = _uniform(st)
            if (_FI[idx - 1] - _FI[idx]) * u + _FI[idx] < math.exp(-0.5 * x * x):
                return x, st


@_inline
def _gamma_draw(shape: float, st: State) -> tuple[float, State]:
    """A Gamma(shape, 1) draw for shape >= 1 (Marsaglia-Tsang; no log on the fast path)."""
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x, st = _normal(st)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u, st = _uniform(st)
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2 or math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d * v, st


@_inline
def _log_gamma_draw(shape: float, st: State) -> tuple[float, State]:
    """log of a Gamma(shape, 1) draw for any shape > 0 (shape < 1 via Gamma(shape + 1))."""
    boost = 0.0
    a = shape
    if a < 1.0:
        u, st = _uniform(st)
        boost = math.log1p(-u) / a  # log(U^(1/a)), U in (0, 1]
        a += 1.0
    g, st = _gamma_draw(a, st)
    return math.log(g) + boost, st


@_inline
def _beta_draw(a: float, b: float, st: State) -> tuple[float, State]:
    if a >= 1.0 and b >= 1.0:
        x, st = _gamma_draw(a, st)
        y, st = _gamma_draw(b, st)
        return x / (x + y), st
    lx, st = _log_gamma_draw(a, st)
    ly, st = _log_gamma_draw(b, st)
    return 1.0 / (1.0 + math.exp(ly - lx)), st


@_inline
def _posterior(
    i: int,
    stored_a: npt.NDArray[np.float64],
    stored_b: npt.NDArray[np.float64],
    a0: npt.NDArray[np.float64],
    b0: npt.NDArray[np.float64],
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    sc: float,
    pr: float,
    wk: float,
    gp: float,
    sm: float,
) -> tuple[float, float]:
    """Task i's posterior from its stored columns and the pending steps (sc, pr, wk, gp, sm).

    The order of operations is ``PoolState.alpha``'s (``bots_core.Lazy``), so
    the results are bit-identical with the engine's. ``q`` (the similarity
    terms qa, qb: one row per task) is read only when ``sm`` is not 0.
    """
    return _posterior_of(
        i, stored_a[i], stored_b[i], a0[i], b0[i], w0, has_ref, g, q, sc, pr, wk, gp, sm
    )


@_inline
def _posterior_of(
    i: int,
    sa: float,
    sb: float,
    pa: float,
    pb: float,
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    sc: float,
    pr: float,
    wk: float,
    gp: float,
    sm: float,
) -> tuple[float, float]:
    """:func:`_posterior` of task i with its stored values ``sa``, ``sb`` and prior ``pa``, ``pb``."""
    a = sa * sc + pa * pr
    b = sb * sc + pb * pr
    if wk != 0.0 or gp != 0.0:  # the reference terms (0 in pools without an interpolation)
        a = (a + w0[i] * wk) + g[i] * gp
        b = (b + (1.0 - w0[i] if has_ref[i] else 0.0) * wk) + g[i] * (-gp)
    if sm != 0.0:
        a += q[i, 0] * sm
        b += q[i, 1] * sm
    return a, b


@_inline
def _offset(
    i: int,
    pa: float,
    pb: float,
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    pr: float,
    wk: float,
    gp: float,
    sm: float,
) -> tuple[float, float]:
    """What the pending steps add to task i's posterior beyond ``scale`` times its stored values.

    A stored value is (posterior - offset) / scale (``store_batch``); prior
    ``pa``, ``pb``.
    """
    off_a = pa * pr
    off_b = pb * pr
    if wk != 0.0 or gp != 0.0:  # as in _posterior_of: adding 0 terms changes nothing
        off_a = (off_a + w0[i] * wk) + g[i] * gp
        off_b = (off_b + (1.0 - w0[i] if has_ref[i] else 0.0) * wk) + g[i] * (-gp)
    if sm != 0.0:
        off_a += q[i, 0] * sm
        off_b += q[i, 1] * sm
    return off_a, off_b


@_jit
def _sift_down(
    key: npt.NDArray[np.float64], pos: npt.NDArray[np.int64], val: npt.NDArray[np.float64], k: int
) -> None:
    """Restores the max-heap property of key[:k] after its root was replaced."""
    i = 0
    while True:
        left = 2 * i + 1
        if left >= k:
            return
        big = left
        if left + 1 < k and key[left + 1] > key[left]:
            big = left + 1
        if key[big] <= key[i]:
            return
        key[i], key[big] = key[big], key[i]
        pos[i], pos[big] = pos[big], pos[i]
        val[i], val[big] = val[big], val[i]
        i = big


@_inline
def _replace_top(
    key: npt.NDArray[np.float64],
    pos: npt.NDArray[np.int64],
    val: npt.NDArray[np.float64],
    k: int,
    new_key: float,
    new_pos: int,
    new_val: float,
) -> float:
    """Puts an entry in place of the max-heap's top; returns the key it pushed out."""
    gone: float = key[0]
    key[0] = new_key
    pos[0] = new_pos
    val[0] = new_val
    _sift_down(key, pos, val, k)
    return gone


@_jit
def _heapify(
    key: npt.NDArray[np.float64], pos: npt.NDArray[np.int64], val: npt.NDArray[np.float64], k: int
) -> None:
    for start in range(k // 2 - 1, -1, -1):
        i = start
        while True:
            left = 2 * i + 1
            if left >= k:
                break
            big = left
            if left + 1 < k and key[left + 1] > key[left]:
                big = left + 1
            if key[big] <= key[i]:
                break
            key[i], key[big] = key[big], key[i]
            pos[i], pos[big] = pos[big], pos[i]
            val[i], val[big] = val[big], val[i]
            i = big


_BLOCK = 1024  # tasks per pass of the SIMD lanes (their buffers stay in the L1/L2 caches)


Scratch = tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float32],
    npt.NDArray[np.float32], npt.NDArray[np.uint64], npt.NDArray[np.float32],
    npt.NDArray[np.float32], npt.NDArray[np.uint8], npt.NDArray[np.float64],
    npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.uint32],
    npt.NDArray[np.float32], npt.NDArray[np.float32],
]  # fmt: skip


@_jit
def _scratch() -> Scratch:
    """Buffers of one block: shapes (float64, float32), bits, attempts, flags, draws, and the
    gathered attempts that the squeeze left open."""
    n = _BLOCK
    return (
        np.empty(n), np.empty(n), np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32),
        np.empty(2 * n, dtype=np.uint64), np.empty(n, dtype=np.float32),
        np.empty(n, dtype=np.float32), np.empty(n, dtype=np.uint8), np.empty(n),
        np.empty(2 * n, dtype=np.int64), np.empty(2 * n, dtype=np.uint8),
        np.empty(2 * n, dtype=np.uint32), np.empty(2 * n, dtype=np.float32),
        np.empty(2 * n, dtype=np.float32),
    )  # fmt: skip


@_jit
def _draw_block(
    a64: npt.NDArray[np.float64],
    b64: npt.NDArray[np.float64],
    key: np.uint64,
    first: int,
    m: int,
    scratch: Scratch,
    st: State,
) -> State:
    """p ~ Beta(a64[j], b64[j]) into ``scratch``'s draws, j < m, for tasks first + j of a block.

    ``scratch`` holds the shapes in float32 already (``_lanes.shapes32``).
    The first pass runs on SIMD lanes (``bots_core._lanes``). A lane whose
    pair of attempts does not stand (about 1 in 90 for shapes from 1 to 40,
    1 in 17 for shapes from 1 to 2), or whose shape is outside [1, 1e30],
    gets a fresh draw of the exact scalar sampler from ``st``, the chunk's
    xoshiro256** stream, in task order. Returns the stream's new state.
    """
    _, _, a32, b32, raw, wa, wb, flag, p, lanes, verdict, u_word, w_open, d_open = scratch
    _lanes.fill_bits(key, first, m, raw)
    bits = raw.view(np.uint32)
    _lanes.candidates(a32, b32, bits, wa, wb, flag, m, lanes, verdict, u_word, w_open, d_open)
    _lanes.ratios(a64, b64, wa, wb, p, m)
    for j in range(m):
        f = flag[j]
        if f == 0:
            continue
        good = (f & (_lanes.REJECT | _lanes.OUTSIDE)) == 0
        if good and (f & _lanes.NEED_A) != 0:
            good = _lanes.mt_accepts(a64[j], wa[j], bits[4 * j + 2])
        if good and (f & _lanes.NEED_B) != 0:
            good = _lanes.mt_accepts(b64[j], wb[j], bits[4 * j + 3])
        if not good:
            p[j], st = _beta_draw(a64[j], b64[j], st)
    return st


@_jit
def draw_chunk(
    alpha: npt.NDArray[np.float64],
    beta: npt.NDArray[np.float64],
    lo: int,
    hi: int,
    target: float,
    shift: npt.NDArray[np.float64],
    tau: float,
    seed: npt.NDArray[np.uint64],
    k: int,
    out_key: npt.NDArray[np.float64],
    out_pos: npt.NDArray[np.int64],
    out_draw: npt.NDArray[np.float64],
    lin: npt.NDArray[np.float64],
    a0: npt.NDArray[np.float64],
    b0: npt.NDArray[np.float64],
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
) -> tuple[int, float]:
    """Draws tasks ``lo:hi`` and keeps the ``k`` smallest keys (a max-heap in the outputs).

    The key is ``|p - goal|``, or with ``tau > 0`` ``|p - goal| / tau``
    minus a Gumbel draw (softmax, smaller is better). Returns (how many were
    kept, the smallest key dropped, inf if none); the count is -1 when a shape
    is not a finite positive number. A key dropped while above the heap's
    top is left out of that minimum: it is above every chunk's final top,
    so above any cut the caller takes. ``goal`` is ``target``, or ``target -
    shift[i]`` when ``shift`` is not empty (a run's own view, docs/algorithm.md §8).
    When ``lin`` is not empty, ``alpha`` and ``beta`` are stored columns and
    ``lin`` = (scale, prior, weak, gap, sim) the pending steps (``bots_core.Lazy``):
    each posterior is computed here, in the same order as ``PoolState.alpha``.
    ``seed`` is the chunk's xoshiro256** state (4 words) and its SplitMix64 key.
    """
    st = (seed[0], seed[1], seed[2], seed[3])
    key = seed[4]
    moved = len(shift) > 0
    lazy = len(lin) > 0
    sc = lin[0] if lazy else 1.0
    pr = lin[1] if lazy else 0.0
    wk = lin[2] if lazy else 0.0
    gp = lin[3] if lazy else 0.0
    sm = lin[4] if lazy else 0.0
    scratch = _scratch()
    a64, b64, p = scratch[0], scratch[1], scratch[8]
    keys = np.empty(_BLOCK)
    m = 0
    dropped = math.inf
    for first in range(lo, hi, _BLOCK):
        mb = min(_BLOCK, hi - first)
        if lazy:
            for j in range(mb):
                a64[j], b64[j] = _posterior(
                    first + j, alpha, beta, a0, b0, w0, has_ref, g, q, sc, pr, wk, gp, sm
                )
            sa, sb = a64[:mb], b64[:mb]
        else:
            sa, sb = alpha[first : first + mb], beta[first : first + mb]
        if not _lanes.shapes32(sa, sb, scratch[2], scratch[3], mb):
            return -1, dropped
        st = _draw_block(sa, sb, key, first, mb, scratch, st)
        if m == k and tau == 0.0:
            # The heap is full and its top only shrinks: a task whose key is
            # not below the top now is dropped, and it can matter to the
            # caller only if it equals the top (it then may tie the final
            # cut, which is at most every chunk's top). The few tasks below
            # the top are looked at one by one.
            top = out_key[0]
            below, ties = _lanes.distances(p, target, shift, first, top, keys, mb)
            if ties > 0:
                dropped = min(dropped, top)
            for j in range(mb if below > 0 else 0):
                key_j = keys[j]
                if key_j >= top:
                    continue
                if key_j < out_key[0]:
                    dropped = min(
                        dropped, _replace_top(out_key, out_pos, out_draw, k, key_j, first + j, p[j])
                    )
                else:
                    dropped = min(dropped, key_j)
            continue
        for j in range(mb):
            i = first + j
            key_i = abs(p[j] - (target - shift[i] if moved else target))
            if tau > 0.0:
                u, st = _uniform(st)
                key_i = key_i / tau + math.log(-math.log1p(-u))  # minus a Gumbel draw
            if m < k:
                out_key[m] = key_i
                out_pos[m] = i
                out_draw[m] = p[j]
                m += 1
                if m == k:
                    _heapify(out_key, out_pos, out_draw, k)
            elif key_i < out_key[0]:
                dropped = min(dropped, _replace_top(out_key, out_pos, out_draw, k, key_i, i, p[j]))
            else:
                dropped = min(dropped, key_i)
    return m, dropped


@_jit
def normals(seed: npt.NDArray[np.uint64], m: int) -> npt.NDArray[np.float64]:
    """m standard normal draws (for the statistical tests)."""
    st = (seed[0], seed[1], seed[2], seed[3])
    out = np.empty(m)
    for i in range(m):
        out[i], st = _normal(st)
    return out


@_jit
def gammas(seed: npt.NDArray[np.uint64], shape: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """One Gamma(shape[i], 1) draw per shape (for tests and the benchmark's reference)."""
    st = (seed[0], seed[1], seed[2], seed[3])
    out = np.empty(len(shape))
    for i in range(len(shape)):
        if shape[i] >= 1.0:
            out[i], st = _gamma_draw(shape[i], st)
        else:
            lg, st = _log_gamma_draw(shape[i], st)
            out[i] = math.exp(lg)
    return out


@_jit
def betas(
    seed: npt.NDArray[np.uint64], alpha: npt.NDArray[np.float64], beta: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """One Beta(alpha[i], beta[i]) draw each, by the selection's sampler (``seed``: 5 words)."""
    st = (seed[0], seed[1], seed[2], seed[3])
    scratch = _scratch()
    p = scratch[8]
    out = np.empty(len(alpha))
    for first in range(0, len(alpha), _BLOCK):
        mb = min(_BLOCK, len(alpha) - first)
        sa, sb = alpha[first : first + mb], beta[first : first + mb]
        _lanes.shapes32(sa, sb, scratch[2], scratch[3], mb)
        st = _draw_block(sa, sb, seed[4], first, mb, scratch, st)
        out[first : first + mb] = p[:mb]
    return out


def _warm_up() -> None:
    """Compiles (or loads from numba's cache) the kernels now, not in a first request."""
    one = np.ones(2)
    seed = np.ones(5, dtype=np.uint64)
    key, pos, draw = np.empty(1), np.empty(1, dtype=np.int64), np.empty(1)
    none, yes, nob = np.zeros(0), np.ones(2, dtype=bool), np.zeros(0, dtype=bool)
    no_q, q = np.zeros((0, 2)), np.zeros((2, 2))
    draw_chunk(
        one, one, 0, 2, 0.5, none, 0.0, seed, 1, key, pos, draw, none, one, one, one, nob, one, no_q
    )
    draw_chunk(
        one, one, 0, 2, 0.5, none, 0.0, seed, 1, key, pos, draw, one, one, one, one, yes, one, q
    )
    betas(seed, one, one)
    i = np.zeros(1, dtype=np.int64)
    lin = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    out = np.empty(1), np.empty(1), np.empty(1)
    rows = (one, one, one, one, one, yes, one, q)
    step_batch(i, one[:1], one[:1], *rows, lin, 0.9, 0.1, *out)
    store_batch(i, one[:1], one[:1], one.copy(), one.copy(), *rows[2:], lin)
    ptr = np.array([0, 1, 1], dtype=np.int64)
    src, w = np.zeros(1, dtype=np.int32), np.ones(1, dtype=np.float32)
    observe_similarity(
        i, one[:1], one[:1], ptr, src, w, 1.0, 1.0, 1.0, 1.0, np.ones((2, 4)), True, none,
        one.copy(), one.copy(), *rows[2:7], q.copy(), lin,
    )  # fmt: skip


@_jit
def step_batch(
    idx: npt.NDArray[np.int64],
    s: npt.NDArray[np.float64],
    t: npt.NDArray[np.float64],
    stored_a: npt.NDArray[np.float64],
    stored_b: npt.NDArray[np.float64],
    a0: npt.NDArray[np.float64],
    b0: npt.NDArray[np.float64],
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    lin: npt.NDArray[np.float64],
    keep: float,
    lam: float,
    new_a: npt.NDArray[np.float64],
    new_b: npt.NDArray[np.float64],
    mean: npt.NDArray[np.float64],
) -> bool:
    """A step's batch rows: posteriors now (their mean), and after the step's explicit evidence.

    Posteriors are computed from the stored columns and ``lin`` (``bots_core.Lazy``)
    in the order of ``PoolState.posterior_at``; the new ones are ``keep * alpha
    + lam * alpha0 + s`` and ``keep * beta + lam * beta0 + (t - s)``. Returns
    False (and nothing is written anywhere) when a new posterior is not finite.
    """
    sc, pr, wk, gp, sm = lin[0], lin[1], lin[2], lin[3], lin[4]
    ok = True
    for j in range(len(idx)):
        i = idx[j]
        a, b = _posterior(i, stored_a, stored_b, a0, b0, w0, has_ref, g, q, sc, pr, wk, gp, sm)
        mean[j] = a / (a + b)
        na = (keep * a + lam * a0[i]) + s[j]
        nb = (keep * b + lam * b0[i]) + (t[j] - s[j])
        new_a[j] = na
        new_b[j] = nb
        if not (math.isfinite(na) and math.isfinite(nb)):
            ok = False
    return ok


@_jit
def store_batch(
    idx: npt.NDArray[np.int64],
    new_a: npt.NDArray[np.float64],
    new_b: npt.NDArray[np.float64],
    stored_a: npt.NDArray[np.float64],
    stored_b: npt.NDArray[np.float64],
    a0: npt.NDArray[np.float64],
    b0: npt.NDArray[np.float64],
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    lin: npt.NDArray[np.float64],
) -> None:
    """Writes posteriors of the rows ``idx`` relative to ``lin`` (``PoolState.store_at``)."""
    sc, pr, wk, gp, sm = lin[0], lin[1], lin[2], lin[3], lin[4]
    for j in range(len(idx)):
        i = idx[j]
        off_a, off_b = _offset(i, a0[i], b0[i], w0, has_ref, g, q, pr, wk, gp, sm)
        stored_a[i] = (new_a[j] - off_a) / sc
        stored_b[i] = (new_b[j] - off_b) / sc


@_jit
def observe_similarity(
    idx: npt.NDArray[np.int64],
    s: npt.NDArray[np.float64],
    t: npt.NDArray[np.float64],
    rev_ptr: npt.NDArray[np.int64],
    rev_src: npt.NDArray[np.int32],
    rev_w: npt.NDArray[np.float32],
    self_weight: float,
    scale: float,
    decay: float,
    m0: float,
    sums: npt.NDArray[np.float64],
    fold: bool,
    prior: npt.NDArray[np.float64],
    stored_a: npt.NDArray[np.float64],
    stored_b: npt.NDArray[np.float64],
    a0: npt.NDArray[np.float64],
    b0: npt.NDArray[np.float64],
    w0: npt.NDArray[np.float64],
    has_ref: npt.NDArray[np.bool_],
    g: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    lin: npt.NDArray[np.float64],
) -> int:
    """One step's outcomes into the similarity sums (``SimilarityEstimator.observe``); O(B k).

    ``sums`` has a row (sum_s, sum_t, p~, den) per task. Adds ``(w * scale)
    * s`` and ``(w * scale) * t`` to the sums of each batch task itself (w =
    ``self_weight``) and then of its reverse neighbours (w = their kernel
    weight), in that order. Each task whose sums changed gets p~ = sum_s /
    sum_t and den = sum_t * decay + m0; with ``fold`` its similarity terms
    become (sum_s / den, (sum_t - sum_s) / den) while its posterior is kept:
    read under the old terms, stored under the new ones (the order of
    ``_posterior`` and ``store_batch``; ``prior``, when not empty, is every
    task's (alpha0, beta0), read instead of ``a0`` and ``b0``). Returns how
    many (task, holder) entries there were.
    """
    total = len(idx) if self_weight > 0.0 else 0
    for j in range(len(idx)):
        total += rev_ptr[idx[j] + 1] - rev_ptr[idx[j]]
    holder = np.empty(total, dtype=np.int64)
    weight = np.empty(total)
    owner = np.empty(total, dtype=np.int64)
    m = 0
    if self_weight > 0.0:
        for j in range(len(idx)):
            holder[m], weight[m], owner[m] = idx[j], self_weight, j
            m += 1
    for j in range(len(idx)):
        i = idx[j]
        for r in range(rev_ptr[i], rev_ptr[i + 1]):
            holder[m], weight[m], owner[m] = rev_src[r], np.float64(rev_w[r]), j
            m += 1
    sc, pr, wk, gp, sm = (
        (lin[0], lin[1], lin[2], lin[3], lin[4]) if fold else (1.0, 0.0, 0.0, 0.0, 0.0)
    )
    uniform = len(prior) > 0
    pinned_a = np.empty(total)
    pinned_b = np.empty(total)
    if fold:
        # Each task's posterior under its old terms, once: the terms' row is
        # scratch until it is rewritten below (NaN marks it, then the slot).
        for e in range(total):
            h = holder[e]
            if not math.isnan(q[h, 0]):
                pa, pb = (prior[0], prior[1]) if uniform else (a0[h], b0[h])
                pinned_a[e], pinned_b[e] = _posterior_of(
                    h, stored_a[h], stored_b[h], pa, pb, w0, has_ref, g, q, sc, pr, wk, gp, sm
                )
                q[h, 0] = math.nan
                q[h, 1] = e
    for e in range(total):
        h, j = holder[e], owner[e]
        ws = weight[e] * scale
        sums[h, 0] += ws * s[j]
        sums[h, 1] += ws * t[j]
    for e in range(total):
        h = holder[e]
        if fold and not math.isnan(q[h, 0]):
            continue  # done at its first entry
        ts, tt = sums[h, 0], sums[h, 1]
        sums[h, 2] = ts / tt if tt > 0.0 else 0.5
        dn = tt * decay + m0
        sums[h, 3] = dn
        if fold:
            slot = int(q[h, 1])
            q[h, 0] = ts / dn
            q[h, 1] = (tt - ts) / dn
            pa, pb = (prior[0], prior[1]) if uniform else (a0[h], b0[h])
            off_a, off_b = _offset(h, pa, pb, w0, has_ref, g, q, pr, wk, gp, sm)
            stored_a[h] = (pinned_a[slot] - off_a) / sc
            stored_b[h] = (pinned_b[slot] - off_b) / sc
    return total


_warm_up()

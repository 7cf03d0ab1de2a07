"""The selection kernel's first pass over a block of tasks: branch-free float32 code on SIMD lanes.

Each task of a block gets one Marsaglia-Tsang attempt for each of its two
Gamma draws (X ~ Gamma(alpha), Y ~ Gamma(beta), p = X / (X + Y)):

* **Bits.** Counter-based: task i's 128 bits are SplitMix64 outputs number
  2i and 2i + 1 of the chunk's key (``mix(key + c * golden)``), so any task's
  bits are computed without the others', in any order, on any lane.
* **Normals.** A Box-Muller pair from two 32-bit uniforms, with a float32
  logarithm (``_log32``, relative error about 1.2e-7) and sine and cosine
  (``_sincos32``, about 5e-8) written as polynomials, so that LLVM
  vectorizes them (it cannot vectorize numba's libm calls). Uniforms are
  (k + 1/2) / 2**32: the pair never exceeds 6.7 standard deviations, which a
  normal does with probability 2e-11.
* **The attempt** is d (1 + w)**3 with d = shape - 1/3 and w = x / sqrt(9 d),
  accepted when log u < 3 d R(w) (Marsaglia and Tsang's test, rewritten
  without cancellation, ``mt_accepts``). Their squeeze u < 1 - 0.0331 x**4,
  with a margin of 2**-18 for float32 rounding, accepts about 92 % of
  attempts at the cost of a few multiplications.
* **Open attempts** are gathered and tested in float32 (``_decide``): bounds
  of exp(T) with T's rounding error (``log_accept_bound``) either accept,
  reject, or leave the attempt open; the kernel gives the few still open
  (about 3 in 100,000) the exact float64 test. Rounding can only leave an
  attempt open, never decide it against the exact test
  (tests/unit/test_lanes.py checks this near the boundary).

The pass writes each attempt's w and a flag per task (``NEED_A``, ``NEED_B``:
open; ``REJECT``; ``OUTSIDE``: a shape outside [1, 1e30], for the scalar
sampler). The kernel (``bots_core._kernel``) draws a task whose attempt was
rejected again from scratch with the exact scalar sampler. That keeps the
Beta exact: the attempts the lanes keep are pairs of independent
Marsaglia-Tsang acceptances, that is, pairs of Gamma draws, and a task
drawn again is an independent exact draw.

Every lane computes the same IEEE operations, whether LLVM makes 4, 8 or 16
lanes of them or none, so the draws do not depend on the vector width.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# "contract": a multiply and an add may become one FMA (one rounding instead
# of two; the error bounds below hold either way). Results are then the same
# on every CPU with FMA (x86-64 since 2013, ARMv8) and differ in last bits
# from a CPU without it.
_jit = nb.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
_inline = nb.njit(
    nogil=True, cache=True, error_model="numpy", fastmath={"contract"}, inline="always"
)

NEED_A = 1  # the float32 test could not decide X's attempt: the exact test decides
NEED_B = 2  # ... nor Y's
REJECT = 4  # an attempt was rejected: the exact scalar sampler draws the task again
OUTSIDE = 8  # a shape outside [1, 1e30]: drawn by the exact scalar sampler

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

_f32 = np.float32
# ln(1 + f) = f - f**2/2 + f**3 P(f) on [sqrt(1/2) - 1, sqrt(2) - 1]: P's
# coefficients from a least-squares fit of the relative error on 2,000
# Chebyshev nodes (numpy.linalg.lstsq), rounded to float32.
_P0 = _f32(0.33333972096443176)
_P1 = _f32(-0.250009685754776)
_P2 = _f32(0.19960597157478333)
_P3 = _f32(-0.165879487991333)
_P4 = _f32(0.14950978755950928)
_P5 = _f32(-0.14197471737861633)
_P6 = _f32(0.08506953716278076)
_LN2 = _f32(math.log(2.0))
_ONE = _f32(1.0)
_HALF = _f32(0.5)
_ZERO = _f32(0.0)
# Taylor coefficients of sin and cos on [-pi/4, pi/4] (error below 5e-8).
_S3, _S5, _S7, _S9 = _f32(-1 / 6), _f32(1 / 120), _f32(-1 / 5040), _f32(1 / 362880)
_C2, _C4, _C6, _C8 = _f32(-0.5), _f32(1 / 24), _f32(-1 / 720), _f32(1 / 40320)
_TWO_PI = _f32(2.0 * math.pi)
_QUARTER = _f32(0.25)
_FOUR = _f32(4.0)
_U32 = _f32(2.0**-32)
_H32 = _f32(2.0**-33)
_MINUS_TWO = _f32(-2.0)
_THIRD = _f32(1.0 / 3.0)
_NINE = _f32(9.0)
_SQUEEZE = _f32(0.0331)
_MARGIN = _f32(2.0**-18)
_SHAPE_MAX = _f32(1e30)


def _split32_typer(typingctx: Any, x: Any) -> Any:
    """(e, m) with x = 2**e m, m in [sqrt(1/2), sqrt(2)), for a positive normal float32 x.

    Written in LLVM IR so that the integer steps stay 32 bits wide (numba
    would widen them to 64, which halves the SIMD lanes).
    """

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32, f32 = ir.IntType(32), ir.FloatType()
        # Adding sqrt(2)'s mantissa gap moves the exponent's cut to sqrt(1/2).
        t = builder.add(builder.bitcast(args[0], i32), ir.Constant(i32, 0x004AFB0D))
        e = builder.sub(builder.lshr(t, ir.Constant(i32, 23)), ir.Constant(i32, 127))
        mant = builder.add(
            builder.and_(t, ir.Constant(i32, 0x007FFFFF)), ir.Constant(i32, 0x3F3504F3)
        )
        parts = [builder.sitofp(e, f32), builder.bitcast(mant, f32)]
        return context.make_tuple(builder, signature.return_type, parts)

    sig = types.UniTuple(types.float32, 2)(types.float32)  # type: ignore[no-untyped-call]
    return sig, codegen


_split32: Any = intrinsic(_split32_typer)


def _wide_typer(typingctx: Any) -> Any:
    """Lets LLVM use 512-bit vectors in the calling function (it prefers 256 on AVX-512 CPUs)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        # llvmlite lists no string attributes, so the set's own add is used; a
        # backend without 512-bit vectors ignores the attribute.
        with contextlib.suppress(Exception):
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


_wide: Any = intrinsic(_wide_typer)


@_inline
def _mix(z: np.uint64) -> np.uint64:
    """SplitMix64's output function (Steele, Lea and Flood, 2014)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: np.uint64 = z ^ (z >> np.uint64(31))
    return out


@_inline
def _log32(x: np.float32) -> np.float32:
    """Natural log of a positive normal float32: x = 2**e m with m in [sqrt(1/2), sqrt(2))."""
    e, m = _split32(x)
    f = m - _ONE
    p = _P6
    p = p * f + _P5
    p = p * f + _P4
    p = p * f + _P3
    p = p * f + _P2
    p = p * f + _P1
    p = p * f + _P0
    out: np.float32 = e * _LN2 + (f - _HALF * f * f + f * f * f * p)
    return out


@_inline
def _sincos32(t: np.float32) -> tuple[np.float32, np.float32]:
    """(cos, sin) of 2 pi t for t in [0, 1): a quarter turn q plus an angle in [-pi/4, pi/4]."""
    q = np.floor(t * _FOUR + _HALF)
    f = (t - q * _QUARTER) * _TWO_PI
    z = f * f
    sn = f + f * z * (_S3 + z * (_S5 + z * (_S7 + z * _S9)))
    cs = _ONE + z * (_C2 + z * (_C4 + z * (_C6 + z * _C8)))
    odd = (q == _f32(1.0)) | (q == _f32(3.0))
    neg = (q == _f32(2.0)) | (q == _f32(3.0))
    c = -sn if odd else cs
    s = cs if odd else sn
    return (-c if neg else c), (-s if neg else s)


@_inline
def _normal_pair(r: np.uint32, r_angle: np.uint32) -> tuple[np.float32, np.float32]:
    """Two independent standard normals (Box-Muller) from two 32-bit words."""
    u = _f32(r) * _U32 + _H32
    rad = math.sqrt(max(_MINUS_TWO * _log32(u), _ZERO))
    c, s = _sincos32(_f32(r_angle) * _U32)
    return rad * c, rad * s


@_jit
def fill_bits(key: np.uint64, first: int, m: int, out: npt.NDArray[np.uint64]) -> None:
    """The bits of tasks first..first + m - 1: SplitMix64 outputs 2i and 2i + 1 of ``key``."""
    _wide()
    for j in range(2 * m):
        out[j] = _mix(key + np.uint64(2 * first + j) * _GOLDEN)


@_inline
def log_accept_bound(w: np.float32, d: np.float32) -> tuple[np.float32, np.float32]:
    """Marsaglia and Tsang's log-acceptance bound T = 3 d R(w) of one attempt, in float32, and its error.

    R(w) = log1p(w) - w + w**2/2 - w**3/3 (``mt_accepts``): its series
    w**4 (-1/4 + w/5 - ...) up to w**11 when |w| < 1/8, else the direct form.
    The error bound covers float32 rounding (and the float64 shape that the
    exact test uses) with a factor of about 4 to spare. Products are ordered
    so that no common case makes a subnormal number (each costs ~100 cycles).
    """
    small = abs(w) < _f32(0.125)
    ser = _f32(-1 / 11)
    ser = ser * w + _f32(1 / 10)
    ser = ser * w + _f32(-1 / 9)
    ser = ser * w + _f32(1 / 8)
    ser = ser * w + _f32(-1 / 7)
    ser = ser * w + _f32(1 / 6)
    ser = ser * w + _f32(-1 / 5)
    ser = ser * w + _f32(1 / 4)
    w2 = w * w
    three_d = _f32(3.0) * d
    series = -((three_d * w2) * (w2 * ser))  # 3 d w**2 = x**2 / 3: of the order of 1
    one_w = max(_ONE + w, _f32(1e-30))
    log1p = _log32(one_w)
    direct = three_d * (log1p - w * (_ONE - w * (_HALF - w * _THIRD)))
    t = series if small else direct
    slack = (
        _f32(0.0)
        if small
        else three_d
        * (
            _f32(5e-7) * abs(log1p)
            + _f32(2.5e-7) / one_w
            + _f32(1.2e-6) * (abs(w) + w2 + abs(w2 * w))
        )
    )
    return t, _f32(4e-6) * max(abs(t), _f32(1e-30)) + slack


@_inline
def _exp_bounds(t: np.float32) -> tuple[np.float32, np.float32]:
    """(lo, hi) with lo <= exp(4 t) <= hi for t <= 0 (Taylor polynomials of degrees 5 and 4, squared twice)."""
    hi = _ONE + t * (_ONE + t * (_HALF + t * (_f32(1 / 6) + t * _f32(1 / 24))))
    c = min(t, _f32(-1e-6))  # c**5 <= t**5, and not subnormal
    c2 = c * c
    lo = hi + c * c2 * c2 * _f32(1 / 120)
    lo = max(lo, _ZERO)
    lo = lo * lo
    hi = hi * hi
    return lo * lo, hi * hi


@_inline
def _decide(word: np.uint32, w: np.float32, d: np.float32) -> np.uint8:
    """0 accept, 1 undecided (exact test), 2 reject: one attempt, in float32, without a log of u.

    u < exp(T) is decided by bounds of exp(T) (``_exp_bounds`` of T/4; T <= 0
    since R <= 0), widened by T's error and float32 rounding.
    """
    u = _f32(word) * _U32 + _H32
    t, err = log_accept_bound(w, d)
    lo, _ = _exp_bounds(_QUARTER * min(t - err, _ZERO))
    _, hi = _exp_bounds(_QUARTER * min(t + err, _ZERO))
    accept = u < lo * _f32(1.0 - 2e-6) - _f32(1e-7)
    reject = (u > hi * _f32(1.0 + 2e-6) + _f32(1e-7)) | (w <= -_ONE)
    verdict: np.uint8 = np.uint8(2 if reject else (0 if accept else 1))
    return verdict


@_inline
def _attempt_w(x: np.float32, shape: np.float32) -> np.float32:
    """w = x / sqrt(9 d) of an attempt with normal x at a float32 shape (d = shape - 1/3)."""
    w: np.float32 = x / math.sqrt(_NINE * (shape - _THIRD))
    return w


@_inline
def _squeezed(word: np.uint32, x: np.float32) -> bool:
    """Marsaglia and Tsang's squeeze u < 1 - 0.0331 x**4 (a margin of 2**-18 for rounding)."""
    u = _f32(word) * _U32 + _H32
    q = x * x
    return bool(u < (_ONE - _SQUEEZE * (q * q)) - _MARGIN)


@_jit
def _decide_all(
    word: npt.NDArray[np.uint32],
    w: npt.NDArray[np.float32],
    d: npt.NDArray[np.float32],
    out: npt.NDArray[np.uint8],
    n: int,
) -> None:
    """``_decide`` of n attempts gathered into contiguous arrays."""
    _wide()
    for r in range(n):
        out[r] = _decide(word[r], w[r], d[r])


@_jit
def shapes32(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    a32: npt.NDArray[np.float32],
    b32: npt.NDArray[np.float32],
    m: int,
) -> bool:
    """The shapes in float32, and whether all are finite positive numbers."""
    _wide()
    valid = True
    for j in range(m):
        a32[j] = np.float32(a[j])
        b32[j] = np.float32(b[j])
        valid &= (a[j] > 0.0) & (b[j] > 0.0) & (a[j] < math.inf) & (b[j] < math.inf)
    return bool(valid)


@_jit
def candidates(
    a32: npt.NDArray[np.float32],
    b32: npt.NDArray[np.float32],
    bits: npt.NDArray[np.uint32],
    wa: npt.NDArray[np.float32],
    wb: npt.NDArray[np.float32],
    flag: npt.NDArray[np.uint8],
    m: int,
    lanes: npt.NDArray[np.int64],
    verdict: npt.NDArray[np.uint8],
    u_word: npt.NDArray[np.uint32],
    w_open: npt.NDArray[np.float32],
    d_open: npt.NDArray[np.float32],
) -> None:
    """One Marsaglia-Tsang attempt for each of the m tasks' two Gammas (4 words of bits each).

    The squeeze accepts about 92 % of attempts; the others are gathered and
    get the float32 test (``_decide``) on the lanes, Gamma by Gamma (``lanes``,
    ``verdict``, ``u_word``, ``w_open``, ``d_open``: room for 2m entries each,
    m for each Gamma). Short loops: a long one would keep
    one iteration's chain of dependent steps in flight, not several.
    """
    _wide()
    for j in range(m):
        wa[j], wb[j] = _normal_pair(bits[4 * j], bits[4 * j + 1])
    for j in range(m):
        a = a32[j]
        b = b32[j]
        x1 = wa[j]
        x2 = wb[j]
        need = np.uint8(0) if _squeezed(bits[4 * j + 2], x1) else np.uint8(NEED_A)
        need |= np.uint8(0) if _squeezed(bits[4 * j + 3], x2) else np.uint8(NEED_B)
        w1 = _attempt_w(x1, a)
        w2 = _attempt_w(x2, b)
        wa[j] = w1
        wb[j] = w2
        inside = (a >= _ONE) & (b >= _ONE) & (a <= _SHAPE_MAX) & (b <= _SHAPE_MAX)
        need |= np.uint8(REJECT) if (w1 <= -_ONE) | (w2 <= -_ONE) else np.uint8(0)
        flag[j] = need if inside else np.uint8(OUTSIDE)
    # Gathers the attempts the squeeze left open, without branches: X's at
    # the front of the buffers, Y's from position m on.
    na = 0
    nb = m
    for j in range(m):
        f = flag[j]
        lanes[na] = j
        u_word[na] = bits[4 * j + 2]
        w_open[na] = wa[j]
        d_open[na] = a32[j] - _THIRD
        na += (f & np.uint8(NEED_A | OUTSIDE | REJECT)) == np.uint8(NEED_A)
        lanes[nb] = j
        u_word[nb] = bits[4 * j + 3]
        w_open[nb] = wb[j]
        d_open[nb] = b32[j] - _THIRD
        nb += (f & np.uint8(NEED_B | OUTSIDE | REJECT)) == np.uint8(NEED_B)
    _decide_all(u_word, w_open, d_open, verdict, na)
    _decide_all(u_word[m:], w_open[m:], d_open[m:], verdict[m:], nb - m)
    for r in range(na):
        _merge(flag, lanes[r], verdict[r], np.uint8(NEED_A))
    for r in range(m, nb):
        _merge(flag, lanes[r], verdict[r], np.uint8(NEED_B))


@_inline
def _merge(flag: npt.NDArray[np.uint8], j: int, verdict: np.uint8, gamma: np.uint8) -> None:
    """A float32 verdict into lane j's flag: accepted clears ``gamma``, rejected sets REJECT."""
    if verdict == np.uint8(0):
        flag[j] &= ~gamma
    elif verdict == np.uint8(2):
        flag[j] |= np.uint8(REJECT)


@_jit
def distances(
    p: npt.NDArray[np.float64],
    target: float,
    shift: npt.NDArray[np.float64],
    first: int,
    top: float,
    keys: npt.NDArray[np.float64],
    m: int,
) -> tuple[int, int]:
    """keys = |p - goal| (goal: target, or target - shift[first + j] when ``shift`` is not empty).

    Returns how many keys are below ``top`` and how many equal it.
    """
    _wide()
    below = 0
    ties = 0
    moved = len(shift) > 0
    for j in range(m):
        key = abs(p[j] - (target - shift[first + j] if moved else target))
        keys[j] = key
        below += key < top
        ties += key == top
    return below, ties


@_jit
def ratios(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    wa: npt.NDArray[np.float32],
    wb: npt.NDArray[np.float32],
    p: npt.NDArray[np.float64],
    m: int,
) -> None:
    """p = X / (X + Y) with X = (a - 1/3)(1 + wa)**3 and Y likewise, in float64."""
    _wide()
    for j in range(m):
        va = 1.0 + np.float64(wa[j])
        vb = 1.0 + np.float64(wb[j])
        x = (a[j] - 1.0 / 3.0) * (va * va * va)
        y = (b[j] - 1.0 / 3.0) * (vb * vb * vb)
        p[j] = x / (x + y)


@_inline
def mt_accepts(shape: float, w: np.float32, word: np.uint32) -> bool:
    """Marsaglia and Tsang's exact test of the attempt d (1 + w)**3 with uniform ``word``, in float64.

    Their test, log u < x**2 / 2 + d (1 - v + log v) with v = (1 + w)**3 and
    x = 3 w sqrt(d), is log u < 3 d R(w) with R(w) = log1p(w) - w + w**2/2 -
    w**3/3. R is computed without the cancellation that the first form
    suffers for large d: by its series -w**4/4 + w**5/5 - ... when |w| < 0.01.
    """
    d = shape - 1.0 / 3.0
    x = np.float64(w)
    if x <= -1.0:
        return False
    if abs(x) < 0.01:
        r = -0.25 + x * (0.2 + x * (-1 / 6 + x * (1 / 7 + x * (-0.125 + x * (1 / 9 - x * 0.1)))))
        r = r * (x * x) * (x * x)
    else:
        r = math.log1p(x) - x * (1.0 - x * (0.5 - x / 3.0))
    u = (np.float64(word) + 0.5) * 2.0**-32
    return bool(math.log(u) < 3.0 * d * r)


@_jit
def normals(key: np.uint64, m: int) -> npt.NDArray[np.float32]:
    """2m normals of the first pass (for the statistical tests)."""
    raw = np.empty(2 * m, dtype=np.uint64)
    fill_bits(key, 0, m, raw)
    bits = raw.view(np.uint32)
    out = np.empty(2 * m, dtype=np.float32)
    for j in range(m):
        out[2 * j], out[2 * j + 1] = _normal_pair(bits[4 * j], bits[4 * j + 1])
    return out


@_jit
def logs(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``_log32`` of each value (for the accuracy test)."""
    out = np.empty_like(x)
    for j in range(len(x)):
        out[j] = _log32(x[j])
    return out


@_jit
def decisions(
    word: npt.NDArray[np.uint32], x: npt.NDArray[np.float32], shape: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """For attempts (normal x, uniform word) at each shape, as the first pass makes them.

    Returns the squeeze's verdict, the float32 test's (0 accept, 1 undecided,
    2 reject) and the exact test's: for the tests that a decided attempt
    always agrees with ``mt_accepts``.
    """
    n = len(x)
    squeezed = np.empty(n, dtype=np.bool_)
    fast = np.empty(n, dtype=np.uint8)
    exact = np.empty(n, dtype=np.bool_)
    for j in range(n):
        s32 = np.float32(shape[j])
        d = s32 - _THIRD
        w = _attempt_w(x[j], s32)
        squeezed[j] = _squeezed(word[j], x[j]) and w > -_ONE
        fast[j] = _decide(word[j], w, d)
        exact[j] = mt_accepts(shape[j], w, word[j])
    return squeezed, fast, exact

"""Batch selection (docs/algorithm.md §4): Thompson, greedy, softmax and uniform rules.

Thompson sampling is the hot path. Draws are made chunk by chunk, each chunk
with its own generator derived from (pool seed, selection number, chunk), so
the chunks can run on several threads (numpy releases the GIL while it fills
arrays) and the result does not depend on how many threads ran them. Beta
draws are made as Gamma ratios in float32: the same Beta distribution as
``Generator.beta``, about twice as fast.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bots_core._config import SelectionMode
from bots_core._errors import CorruptStateError, InvalidInputError, shorten
from bots_core._runs import offset
from bots_core._state import FloatArray, PoolState
from bots_core._update import IntArray

CHUNK = 1 << 16

_pool_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _executor
    with _pool_lock:
        if _executor is None:
            workers = max(1, min(8, os.cpu_count() or 1))
            _executor = ThreadPoolExecutor(workers, thread_name_prefix="bots-draw")
        return _executor


@dataclass(frozen=True)
class Selection:
    """A drawn batch, best first.

    Attributes:
        indices: Task indices.
        sampled: The value each task was scored by (draw or posterior mean).
        means: Posterior means of the selected tasks.
    """

    indices: IntArray
    sampled: FloatArray
    means: FloatArray


def seed_sequence(seed: int, selection_number: int) -> np.random.SeedSequence:
    """The seed of one selection: a pure function of pool seed and selection number."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(selection_number,))


def select_batch(
    state: PoolState, batch_size: int, selection_number: int, run: str = ""
) -> Selection:
    """Selects ``batch_size`` distinct tasks from the pool by its configured rule, for ``run``.

    The draw is a pure function of the posteriors, the pool seed and
    ``selection_number``. When ``run``'s capability differs from the pool's,
    the draws (or means) of tasks with reference rates are moved to the run's
    capability before they are compared with the target (docs/algorithm.md §8).
    """
    n = state.task_count
    if not 1 <= batch_size <= n:
        raise InvalidInputError(
            f"batch_size must be in [1, {n}] for pool {shorten(state.name)}, got {batch_size}"
        )
    cfg = state.config
    ss = seed_sequence(cfg.seed, selection_number)
    merge_rng = np.random.default_rng(ss)
    target: float | FloatArray = cfg.target
    run_state = state.runs.get(run)
    move = offset(state.capability, run_state.capability) if run_state is not None else None
    shift: FloatArray | None = None
    if move is not None and state.derived.ref_count:
        shift = state.derived.gap * move  # the run's rate minus the pool's, per task
        target = cfg.target - shift
    if cfg.mode is SelectionMode.UNIFORM:
        idx = np.sort(merge_rng.choice(n, size=batch_size, replace=False)).astype(np.int64)
        merge_rng.shuffle(idx)
        values = state.alpha[idx] / (state.alpha[idx] + state.beta[idx])
        return Selection(idx, values, values.copy())
    if cfg.mode is SelectionMode.GREEDY:
        means = state.posterior_mean()
        idx = top_k(np.abs(means - target), batch_size, merge_rng)
        scored = means[idx] if shift is None else np.clip(means[idx] + shift[idx], 0.0, 1.0)
        return Selection(idx, scored, means[idx])
    cand, draws = thompson_candidates(
        state.alpha, state.beta, target, batch_size, ss, softmax_tau=_tau(state)
    )
    if cfg.mode is SelectionMode.SOFTMAX:
        keys = draws[1]
        pos = top_k(keys, batch_size, merge_rng)
    else:
        goal = target if isinstance(target, (int, float)) else target[cand]
        pos = top_k(np.abs(draws[0] - goal), batch_size, merge_rng)
    idx = cand[pos]
    sampled = draws[0][pos]
    if shift is not None:
        sampled = np.clip(sampled + shift[idx], 0.0, 1.0)
    means = state.alpha[idx] / (state.alpha[idx] + state.beta[idx])
    return Selection(idx, sampled, means)


def _tau(state: PoolState) -> float | None:
    return state.config.temperature if state.config.mode is SelectionMode.SOFTMAX else None


def top_k(dist: FloatArray, k: int, rng: np.random.Generator) -> IntArray:
    """Positions of the ``k`` smallest values, ascending; ties broken uniformly at random."""
    m = len(dist)
    if k >= m:
        cand = np.arange(m, dtype=np.int64)
    else:
        part = np.argpartition(dist, k - 1)
        cut = dist[part[k - 1]]
        below = np.flatnonzero(dist < cut)
        tied = np.flatnonzero(dist == cut)
        need = k - len(below)
        if need < len(tied):
            tied = rng.choice(tied, size=need, replace=False)
        cand = np.concatenate([below, tied]).astype(np.int64)
    order = np.lexsort((rng.random(len(cand)), dist[cand]))
    return cand[order]


def thompson_candidates(
    alpha: FloatArray,
    beta: FloatArray,
    target: float | FloatArray,
    k: int,
    ss: np.random.SeedSequence,
    softmax_tau: float | None = None,
) -> tuple[IntArray, tuple[FloatArray, FloatArray]]:
    """Draws p ~ Beta(alpha, beta) for every task and keeps each chunk's best ``k``.

    Returns candidate indices (every task that can be in the top ``k``, ties
    at a chunk's cut included) with their draws and their ranking keys
    (``|p - target|``, or for softmax the negated Gumbel-perturbed logits, so
    that smaller is better in both cases). ``target`` may be one value per task.
    """
    n = len(alpha)
    starts = range(0, n, CHUNK)

    def run(ci: int) -> tuple[IntArray, FloatArray, FloatArray]:
        lo = ci * CHUNK
        hi = min(n, lo + CHUNK)
        rng = np.random.default_rng(
            np.random.SeedSequence(entropy=ss.entropy, spawn_key=(*ss.spawn_key, ci))
        )
        p = beta_draws(alpha[lo:hi], beta[lo:hi], rng)
        goal = (
            np.float32(target)
            if isinstance(target, (int, float))
            else np.asarray(target)[lo:hi].astype(np.float32)
        )
        dist = p - goal
        np.abs(dist, out=dist)
        if softmax_tau is not None:
            # Gumbel top-k: sampling k without replacement from softmax(-dist/tau)
            # is taking the k largest of -dist/tau + Gumbel noise.
            key = dist / softmax_tau
            key -= rng.gumbel(size=len(key))
        else:
            key = dist
        if len(key) > k:
            cut = np.partition(key, k - 1)[k - 1]
            keep = np.flatnonzero(key <= cut)
        else:
            keep = np.arange(len(key))
        return (
            (keep + lo).astype(np.int64),
            p[keep].astype(np.float64),
            key[keep].astype(np.float64),
        )

    chunks = list(range(len(starts)))
    results = list(_threads().map(run, chunks)) if len(chunks) > 1 else [run(0)]
    idx = np.concatenate([r[0] for r in results])
    draws = np.concatenate([r[1] for r in results])
    keys = np.concatenate([r[2] for r in results])
    return idx, (draws, keys)


def beta_draws(
    alpha: FloatArray, beta: FloatArray, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Beta(alpha, beta) draws as X / (X + Y) with X ~ Gamma(alpha), Y ~ Gamma(beta).

    Shapes >= 1 (every task under the default prior: the update never takes
    a shape below min(its start, its prior)) use :func:`gamma_draws`, a
    vectorised Marsaglia-Tsang sampler in float32. Tasks with a shape below 1
    are drawn with ``Generator.beta`` in float64, which also avoids float32
    underflow for tiny shapes.
    """
    n = len(alpha)
    small = (alpha < 1.0) | (beta < 1.0)
    shapes = np.concatenate([alpha, beta]).astype(np.float32)
    if small.any():
        shapes[np.concatenate([small, small])] = 1.0  # placeholders, overwritten below
    g = gamma_draws(shapes, rng)
    x, y = g[:n], g[n:]
    y += x
    x /= y
    if small.any():
        idx = np.flatnonzero(small)
        x[idx] = rng.beta(alpha[idx], beta[idx]).astype(np.float32)
    return x


def gamma_draws(
    shape: npt.NDArray[np.float32], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Gamma(shape, 1) draws for shapes >= 1 (Marsaglia and Tsang, 2000), vectorised.

    An exact rejection sampler: d = shape - 1/3, c = 1/sqrt(9 d); with
    x ~ N(0, 1) and v = (1 + c x)^3 > 0, accept d v when u < 1 - 0.0331 x^4
    (the squeeze, ~98% of draws) or log u < x^2/2 + d (1 - v + log v).
    Rejected positions are drawn again until none is left. The normals come
    from :func:`normal_draws`.

    A finite shape is accepted with probability above 0.95 per round, so a
    position still rejected after ``_PATIENT_ROUNDS`` rounds (odds below
    1e-60) has a shape that is not a number: CorruptStateError, never a loop
    that runs forever.
    """
    d = shape - np.float32(1.0 / 3.0)
    c = np.float32(1.0 / 3.0) / np.sqrt(d)
    out: npt.NDArray[np.float32] = d  # replaced by the first pass's draws
    todo: IntArray | None = None  # None: every position (no gather on the first pass)
    for rounds in itertools.count(1):
        if rounds > _PATIENT_ROUNDS:
            assert todo is not None
            if not np.all(np.isfinite(d[todo])):
                raise CorruptStateError("a posterior is not a finite number: cannot draw from it")
        dd = d if todo is None else d[todo]
        cc = c if todo is None else c[todo]
        m = len(dd)
        x = normal_draws(m, rng)
        u = rng.random(m, dtype=np.float32)
        v = cc * x
        v += np.float32(1.0)
        positive = v > 0
        v *= v * v
        x *= x
        ok = u < np.float32(1.0) - np.float32(0.0331) * (x * x)
        ok &= positive
        slow = np.flatnonzero(positive & ~ok)
        if len(slow):
            vs = v[slow]
            with np.errstate(divide="ignore"):  # log(0) = -inf: accepted, as it should be
                lhs = np.log(u[slow])
            ok[slow] = lhs < np.float32(0.5) * x[slow] + dd[slow] * (
                np.float32(1.0) - vs + np.log(vs)
            )
        v *= dd
        rejected_here = np.flatnonzero(~ok)
        if todo is None:
            out = v  # accepted draws are final; rejected ones are overwritten below
            rejected = rejected_here
        else:
            out[todo] = v
            rejected = todo[rejected_here]
        if not len(rejected):
            return out
        todo = rejected
    raise AssertionError("unreachable")


_PATIENT_ROUNDS = 48
_TWO_PI = np.float32(2.0 * np.pi)


def normal_draws(m: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """m standard normal draws in float32 by the Box-Muller transform.

    Exact up to float32 rounding (the uniforms' 2**-24 grid bounds |z| by
    5.77, a tail of probability 8e-9); about a third cheaper here than the
    ziggurat of ``Generator.standard_normal``, and the normals are most of
    the cost of a Gamma draw.
    """
    h = (m + 1) // 2
    u1 = rng.random(h, dtype=np.float32)
    np.subtract(np.float32(1.0), u1, out=u1)  # (0, 1]: log is finite
    np.log(u1, out=u1)
    u1 *= np.float32(-2.0)
    np.sqrt(u1, out=u1)
    theta = rng.random(h, dtype=np.float32)
    theta *= _TWO_PI
    out = np.empty(2 * h, dtype=np.float32)
    np.cos(theta, out=out[:h])
    np.sin(theta, out=out[h:])
    out[:h] *= u1
    out[h:] *= u1
    return out[:m]

"""Batch selection (docs/algorithm.md §4): Thompson, greedy, softmax and uniform rules.

Thompson sampling is the hot path. Draws are made chunk by chunk by a
compiled kernel (``bots_core._kernel``, numba, GIL released), each chunk with
its own generator state derived from (pool seed, selection number, chunk), so
the chunks run on several threads and the result does not depend on how many
threads ran them. Each chunk keeps only its best ``k`` candidates.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from bots_core._config import SelectionMode
from bots_core._errors import CorruptStateError, InvalidInputError, shorten
from bots_core._runs import run_offset
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
    target = cfg.target
    move = run_offset(state.runs, run, state.steps_applied)
    shift: FloatArray | None = None
    if move is not None and state.derived.ref_count:
        shift = state.derived.gap * move  # the run's rate minus the pool's, per task
    if cfg.mode is SelectionMode.UNIFORM:
        idx = np.sort(merge_rng.choice(n, size=batch_size, replace=False)).astype(np.int64)
        merge_rng.shuffle(idx)
        a, b = state.posterior_at(idx)
        values = a / (a + b)
        return Selection(idx, values, values.copy())
    if cfg.mode is SelectionMode.GREEDY:
        means = state.posterior_mean()
        goal = target if shift is None else target - shift
        idx = top_k(np.abs(means - goal), batch_size, merge_rng)
        scored = means[idx] if shift is None else np.clip(means[idx] + shift[idx], 0.0, 1.0)
        return Selection(idx, scored, means[idx])
    cand, draws = thompson_candidates(
        state.stored_alpha,
        state.stored_beta,
        target,
        batch_size,
        ss,
        softmax_tau=_tau(state),
        shift=shift,
        lazy=_lazy_inputs(state),
    )
    if cfg.mode is SelectionMode.SOFTMAX:
        keys = draws[1]
        pos = top_k(keys, batch_size, merge_rng)
    else:
        goal = target if shift is None else target - shift[cand]
        pos = top_k(np.abs(draws[0] - goal), batch_size, merge_rng)
    idx = cand[pos]
    sampled = draws[0][pos]
    if shift is not None:
        sampled = np.clip(sampled + shift[idx], 0.0, 1.0)
    a, b = state.posterior_at(idx)
    return Selection(idx, sampled, a / (a + b))


LazyInputs = tuple[
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    npt.NDArray[np.bool_],
    FloatArray,
    FloatArray,
]


def _lazy_inputs(state: PoolState) -> LazyInputs | None:
    """What the kernel needs to compute posteriors from stored columns (None: they are posteriors)."""
    lz = state.lazy
    if lz.identity:
        return None
    _, _, a0, b0, w0, has_ref, g, q = state.kernel_rows()
    return lz.coefficients(), a0, b0, w0, has_ref, g, q


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
    target: float,
    k: int,
    ss: np.random.SeedSequence,
    softmax_tau: float | None = None,
    shift: FloatArray | None = None,
    lazy: LazyInputs | None = None,
) -> tuple[IntArray, tuple[FloatArray, FloatArray]]:
    """Draws p ~ Beta(alpha, beta) for every task and keeps the candidates for the best ``k``.

    With ``lazy`` (``PoolState.lazy`` as the kernel takes it), ``alpha`` and
    ``beta`` are stored columns and each posterior is computed as it is drawn.

    Returns candidate indices (every task whose ranking key is at most the
    ``k``-th smallest, ties at that cut included) with their draws and their
    ranking keys (``|p - target|``, or for softmax ``|p - target| / tau``
    minus Gumbel noise, so that smaller is better in both cases). With
    ``shift`` (one value per task) the target of task i is ``target - shift[i]``.

    Raises:
        CorruptStateError: a posterior shape is not a finite positive number.
    """
    n = len(alpha)
    chunks = (n + CHUNK - 1) // CHUNK
    seeds = chunk_seeds(ss, chunks)
    tau = 0.0 if softmax_tau is None else float(softmax_tau)
    if not tau >= 0.0:
        raise InvalidInputError(f"softmax temperature must be positive, got {softmax_tau}")
    key = np.empty((chunks, k))
    pos = np.empty((chunks, k), dtype=np.int64)
    draw = np.empty((chunks, k))
    kept = np.empty(chunks, dtype=np.int64)
    dropped = np.empty(chunks)
    moved = np.zeros(0) if shift is None else np.ascontiguousarray(shift, dtype=np.float64)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    beta = np.ascontiguousarray(beta, dtype=np.float64)
    lin = _NO_LAZY if lazy is None else lazy

    def run(block: range) -> None:
        for ci in block:
            kept[ci], dropped[ci] = kernel().draw_chunk(
                alpha, beta, ci * CHUNK, min(n, (ci + 1) * CHUNK), target, moved, tau,
                seeds[ci], k, key[ci], pos[ci], draw[ci], *lin,
            )  # fmt: skip

    _run_blocks(run, chunks)
    if np.any(kept < 0):
        raise CorruptStateError("a posterior is not a finite positive number: cannot draw from it")
    mask = np.arange(k) < kept[:, None]
    cand_key, cand_pos, cand_draw = key[mask], pos[mask], draw[mask]
    cut = np.partition(cand_key, k - 1)[k - 1] if len(cand_key) > k else cand_key.max()
    tied = np.flatnonzero(dropped <= cut)
    if len(tied):
        # A chunk dropped a task whose key equals the cut (the heap keeps k, not
        # its ties): draw those chunks again, keeping every task, for exact ties.
        extra = [
            _chunk_all(alpha, beta, int(ci), target, moved, tau, seeds[ci], lin) for ci in tied
        ]
        keep = ~np.isin(cand_pos // CHUNK, tied)
        cand_key = np.concatenate([cand_key[keep], *(e[0] for e in extra)])
        cand_pos = np.concatenate([cand_pos[keep], *(e[1] for e in extra)])
        cand_draw = np.concatenate([cand_draw[keep], *(e[2] for e in extra)])
    close = cand_key <= cut
    order = np.argsort(cand_pos[close], kind="stable")  # task order: independent of threads
    return cand_pos[close][order], (cand_draw[close][order], cand_key[close][order])


_NONE = np.zeros(0)
_NO_LAZY: LazyInputs = (
    _NONE, _NONE, _NONE, _NONE, np.zeros(0, dtype=bool), _NONE, np.zeros((0, 2)),
)  # fmt: skip


def kernel() -> ModuleType:
    """The compiled kernel module, imported (numba compiles or loads it, ~2 s) on first use.

    Importing ``bots_core`` stays cheap; the server warms the kernel up in the
    background as it starts (``warm_up_kernel``), so no request waits for it.
    """
    from bots_core import _kernel

    return _kernel


def warm_up_kernel() -> threading.Thread:
    """Imports the kernel on a daemon thread; a draw meanwhile waits for the import."""
    thread = threading.Thread(target=kernel, name="bots-kernel-warm-up", daemon=True)
    thread.start()
    return thread


def chunk_seeds(ss: np.random.SeedSequence, chunks: int) -> npt.NDArray[np.uint64]:
    """Seeds of a selection's chunks: row c is words 5c to 5c + 4 of ``ss``'s state.

    A row is a xoshiro256** state (4 words) and a SplitMix64 key (the 5th).
    Word i of ``generate_state`` does not depend on how many are asked for,
    so a chunk's seed does not depend on the pool's size beyond it.
    """
    seeds = np.asarray(ss.generate_state(5 * chunks, np.uint64), dtype=np.uint64).reshape(chunks, 5)
    seeds[~seeds[:, :4].any(axis=1), 0] = 1  # the all-zero state is xoshiro's only fixed point
    return seeds


def _chunk_all(
    alpha: FloatArray, beta: FloatArray, ci: int, target: float, moved: FloatArray,
    tau: float, seed: npt.NDArray[np.uint64], lin: LazyInputs,
) -> tuple[FloatArray, IntArray, FloatArray]:  # fmt: skip
    lo, hi = ci * CHUNK, min(len(alpha), (ci + 1) * CHUNK)
    key, pos, draw = np.empty(hi - lo), np.empty(hi - lo, dtype=np.int64), np.empty(hi - lo)
    kernel().draw_chunk(
        alpha, beta, lo, hi, target, moved, tau, seed, hi - lo, key, pos, draw, *lin
    )
    return key, pos, draw


def _run_blocks(run: Callable[[range], None], chunks: int) -> None:
    """Runs ``run`` over contiguous blocks of chunks on the worker threads.

    About four blocks per worker, taken as workers free up: on a shared
    machine a core that another process slows down then does less of the
    work, instead of the whole draw waiting for its fixed half (the likely
    cause of the one 2x median of the embedded-store benchmark on the 2-core
    VM). The result does not depend on the blocks: every chunk has its seed.
    """
    ex = _threads()
    workers = getattr(ex, "_max_workers", 1)
    blocks = min(chunks, 4 * workers)
    if workers <= 1 or blocks <= 1:
        run(range(chunks))
        return
    bounds = np.linspace(0, chunks, blocks + 1).astype(int)
    futures = [ex.submit(run, range(lo, hi)) for lo, hi in itertools.pairwise(bounds)]
    for f in futures:
        f.result()


def beta_draws(alpha: FloatArray, beta: FloatArray, rng: np.random.Generator) -> FloatArray:
    """One Beta(alpha[i], beta[i]) draw each, by the selection kernel (float64).

    Seeded from ``rng``. Any finite positive shapes; see ``bots_core._kernel``.

    Raises:
        CorruptStateError: a shape is not a finite positive number.
    """
    a = np.ascontiguousarray(alpha, dtype=np.float64)
    b = np.ascontiguousarray(beta, dtype=np.float64)
    if not (np.all((a > 0) & (a < np.inf)) and np.all((b > 0) & (b < np.inf))):
        raise CorruptStateError("a posterior is not a finite positive number: cannot draw from it")
    seed = rng.integers(0, np.iinfo(np.uint64).max, size=5, dtype=np.uint64, endpoint=True)
    if not seed[:4].any():
        seed[0] = 1
    out: FloatArray = kernel().betas(seed, a, b)
    return out

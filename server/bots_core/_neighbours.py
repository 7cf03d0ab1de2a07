"""Task embeddings and their k-nearest-neighbour graph (docs/similarity.md).

Neighbours are found once, when tasks are added: exactly, block by block with
numpy, for pools up to ``EXACT_LIMIT`` tasks, and with an approximate
nearest-neighbour index (faiss HNSW, an optional dependency) above it. The graph
stores for each task its k neighbours and their kernel weights, and the
reverse lists (which tasks hold j as a neighbour) that let a step touch only
the neighbours of the tasks it evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bots_core._errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]

DEFAULT_K = 16
# Above this many tasks the exact search (O(N^2 d)) gives way to the ANN index.
# At 20,000 tasks (d = 32, k = 16, 2 busy cores) the exact search took 14.4 s, faiss 3.4 s.
EXACT_LIMIT = 10_000
_BLOCK_BYTES = 64 << 20  # distance block of the exact search
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 48


def pca(x: npt.ArrayLike, dim: int) -> tuple[F32Array, F32Array, F32Array]:
    """Principal components of the rows of ``x``: (projected rows, mean, components).

    Args:
        x: Vectors, shape (N, D).
        dim: Components to keep (at most min(N, D)).

    Returns:
        The rows projected on the first ``dim`` components (float32, shape
        (N, dim)), the mean (D,) and the components (dim, D).
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        raise InvalidInputError("pca needs a non-empty 2-D array")
    dim = min(dim, a.shape[0], a.shape[1])
    mean = a.mean(axis=0)
    c = a - mean
    # The D x D covariance is small for sentence embeddings (D <= 1024).
    vals, vecs = np.linalg.eigh(c.T @ c)
    comps = vecs[:, np.argsort(vals)[::-1][:dim]].T
    # Fix each component's sign (largest |loading| positive) so fits are reproducible.
    signs = np.sign(comps[np.arange(dim), np.argmax(np.abs(comps), axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    return (c @ comps.T).astype(np.float32), mean.astype(np.float32), comps.astype(np.float32)


def quantize_int8(x: npt.ArrayLike) -> tuple[npt.NDArray[np.int8], float]:
    """Symmetric int8 codes of ``x`` with one scale: x ~ codes * scale."""
    a = np.asarray(x, dtype=np.float32)
    top = float(np.max(np.abs(a))) if a.size else 0.0
    scale = top / 127.0 if top > 0 else 1.0
    return np.clip(np.rint(a / scale), -127, 127).astype(np.int8), scale


def exact_neighbours(
    x: npt.ArrayLike, k: int, rows: I64Array | None = None
) -> tuple[I32Array, F32Array]:
    """The k nearest other rows (Euclidean) of each row of ``x``, by blocked numpy.

    Args:
        x: Vectors, shape (N, d).
        k: Neighbours per task (< N).
        rows: Query rows (default all).

    Returns:
        Neighbour indices (len(rows), k), nearest first, and their distances.
    """
    a = np.ascontiguousarray(x, dtype=np.float32)
    n = len(a)
    q_rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if not 0 < k < n:
        raise InvalidInputError(f"k must be in [1, {n - 1}], got {k}")
    sq = np.einsum("ij,ij->i", a, a)
    block = max(1, _BLOCK_BYTES // (4 * n))
    nbr = np.empty((len(q_rows), k), dtype=np.int32)
    dist = np.empty((len(q_rows), k), dtype=np.float32)
    for lo in range(0, len(q_rows), block):
        r = q_rows[lo : lo + block]
        d2 = sq[r, None] - 2.0 * (a[r] @ a.T) + sq[None, :]
        d2[np.arange(len(r)), r] = np.inf  # not its own neighbour
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        nbr[lo : lo + len(r)] = np.take_along_axis(part, order, axis=1)
        dist[lo : lo + len(r)] = np.sqrt(np.maximum(np.take_along_axis(pd, order, axis=1), 0.0))
    return nbr, dist


def ann_neighbours(x: npt.ArrayLike, k: int) -> tuple[I32Array, F32Array]:
    """Approximate k nearest other rows of each row, with a faiss HNSW index.

    Needs ``pip install faiss-cpu``. Chosen by measurement on the 2-core VM
    (clustered data, d = 32, k = 16, build + all-rows query): at 100,000 rows
    faiss HNSW took 7.3 s (recall 0.93), hnswlib 16.1 s (0.94), usearch 45 s
    (0.93) at the same graph settings (M = 16, efConstruction = 40); faiss
    IVF-flat was faster but reached only 0.84 at nprobe 48. At 1M rows see
    docs/similarity.md.
    """
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the environment
        raise InvalidInputError(
            f"pools above {EXACT_LIMIT} tasks need an ANN index: pip install faiss-cpu"
        ) from None
    a = np.ascontiguousarray(x, dtype=np.float32)
    n, d = a.shape
    index = faiss.IndexHNSWFlat(d, HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(a)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
    d2, lab = index.search(a, k + 1)
    lab = np.asarray(lab, dtype=np.int64)
    # Drop each row's own entry (usually first); a row that did not find
    # itself (or found fewer than k + 1 rows, marked -1) loses its last entry.
    own = (lab == np.arange(n)[:, None]) | (lab < 0)
    drop = np.where(own.any(axis=1), np.argmax(own, axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    nbr = lab[keep].reshape(n, k)
    dist = np.sqrt(np.maximum(np.asarray(d2, dtype=np.float32)[keep].reshape(n, k), 0.0))
    # Rare rows with a second -1: point at themselves with weight 0 (infinite distance).
    bad = nbr < 0
    if bad.any():
        nbr = np.where(bad, np.arange(n)[:, None], nbr)
        dist = np.where(bad, np.float32(np.inf), dist)
    return nbr.astype(np.int32), dist.astype(np.float32)


@dataclass
class NeighbourGraph:
    """Each task's k neighbours with kernel weights, and the reverse lists.

    Attributes:
        neighbours: (N, k) neighbour indices, nearest first.
        weights: (N, k) kernel weights exp(-dist^2 / (2 h^2)) in (0, 1].
        bandwidth: h.
        rev_ptr: (N + 1) offsets: the tasks holding j as a neighbour are
            ``rev_src[rev_ptr[j]:rev_ptr[j + 1]]`` with weights ``rev_w[...]``.
        rev_src: Holder of each reverse entry.
        rev_w: Kernel weight of each reverse entry.
    """

    neighbours: I32Array
    weights: F32Array
    bandwidth: float
    rev_ptr: I64Array
    rev_src: I32Array
    rev_w: F32Array

    @property
    def task_count(self) -> int:
        """Tasks N."""
        return len(self.neighbours)

    @property
    def k(self) -> int:
        """Neighbours per task."""
        return int(self.neighbours.shape[1])

    @classmethod
    def from_neighbours(
        cls, neighbours: I32Array, dist: F32Array, bandwidth: float | None = None
    ) -> NeighbourGraph:
        """Builds the kernel weights and the reverse lists from a neighbour table.

        Args:
            neighbours: (N, k) indices.
            dist: (N, k) distances.
            bandwidth: Kernel width h; default the median distance to the
                k-th neighbour, so a typical k-th neighbour weighs exp(-1/2).
        """
        n, k = neighbours.shape
        if bandwidth is None:
            bandwidth = float(np.median(dist[:, -1])) if n else 1.0
        h = bandwidth if bandwidth > 0 and math.isfinite(bandwidth) else 1.0
        w = np.exp(-(dist.astype(np.float64) ** 2) / (2.0 * h * h)).astype(np.float32)
        flat = neighbours.reshape(-1).astype(np.int64)
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=n)
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        src = (order // k).astype(np.int32)
        return cls(neighbours.astype(np.int32), w, h, ptr, src, w.reshape(-1)[order])

    def reverse(self, tasks: I64Array) -> tuple[I64Array, I64Array, F32Array]:
        """Reverse entries of ``tasks``: (position in ``tasks``, holder, weight), O(sum of degrees)."""
        lo, hi = self.rev_ptr[tasks], self.rev_ptr[tasks + 1]
        deg = hi - lo
        total = int(deg.sum())
        owner = np.repeat(np.arange(len(tasks), dtype=np.int64), deg)
        # Positions lo[o] + (0 .. deg[o] - 1) of every task, as one flat index.
        starts = np.repeat(lo - np.cumsum(deg) + deg, deg)
        pos = starts + np.arange(total, dtype=np.int64)
        return owner, self.rev_src[pos].astype(np.int64), self.rev_w[pos]


def knn_graph(
    x: npt.ArrayLike,
    k: int = DEFAULT_K,
    *,
    bandwidth: float | None = None,
    exact: bool | None = None,
) -> NeighbourGraph:
    """The neighbour graph of the rows of ``x`` (exact up to ``EXACT_LIMIT`` rows, else ANN).

    Args:
        x: Embeddings, shape (N, d); float or int8 codes (distances scale
            with the codes, and the bandwidth with them).
        k: Neighbours per task; at most N - 1.
        bandwidth: Kernel width (default: see :meth:`NeighbourGraph.from_neighbours`).
        exact: Force the exact (True) or the ANN (False) search.
    """
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise InvalidInputError("embeddings must be a finite 2-D array")
    n = len(a)
    k = min(k, n - 1)
    if k < 1:
        nb = np.zeros((n, 0), dtype=np.int32)
        return NeighbourGraph.from_neighbours(nb, np.zeros((n, 0), np.float32), bandwidth)
    use_exact = n <= EXACT_LIMIT if exact is None else exact
    nbr, dist = exact_neighbours(a, k) if use_exact else ann_neighbours(a, k)
    return NeighbourGraph.from_neighbours(nbr, dist, bandwidth)

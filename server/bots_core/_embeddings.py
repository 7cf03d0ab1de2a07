"""Task embeddings as a pool stores them: validated, reduced to int8 codes (docs/similarity.md).

A pool fits one :class:`EmbeddingBasis` on the first tasks that bring
embeddings and keeps it: later tasks are reduced with the same basis, so that
all codes live in one space. Embeddings of at most ``STORED_DIM`` dimensions
are kept as they are (``bots embed`` writes 32 by default); longer ones are
projected on their first ``STORED_DIM`` principal components. Either way the
values are quantized to int8 with one scale per pool, which makes every
distance between two codes an exact integer (see ``bots_core._pool_estimator``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bots_core._errors import InvalidInputError, shorten
from bots_core._neighbours import pca, quantize_int8

F32Array = npt.NDArray[np.float32]
Codes = npt.NDArray[np.int8]

# Longest embedding a task may carry (sentence embedders give 384 .. 1024).
MAX_EMBEDDING_DIM = 1024
# Dimensions a pool stores per task (int8 each).
STORED_DIM = 32
_HEAD = struct.Struct("<IId")  # input dimension, stored dimension (0 = as given), scale
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)
class EmbeddingBasis:
    """How a pool turns raw embeddings into stored codes.

    ``codes = clip(rint(project(x) / scale), -127, 127)`` with ``project`` the
    identity (``components`` None) or ``(x - mean) @ components.T``.

    Attributes:
        dim_in: Dimension of the raw embeddings the pool takes.
        scale: Quantization step: the largest absolute reduced value of the
            tasks the basis was fitted on, over 127.
        mean: (dim_in,) mean of those tasks (PCA only).
        components: (dim, dim_in) principal components (PCA only).
    """

    dim_in: int
    scale: float
    mean: F32Array | None = None
    components: F32Array | None = None

    @property
    def dim(self) -> int:
        """Dimension of the stored codes."""
        return self.dim_in if self.components is None else len(self.components)

    @classmethod
    def fit(cls, raw: F32Array) -> EmbeddingBasis:
        """The basis of a pool whose first embedded tasks are the rows of ``raw`` (N, D)."""
        d_in = raw.shape[1]
        if d_in <= STORED_DIM:
            return cls(d_in, quantize_int8(raw)[1])
        reduced, mean, comps = pca(raw, STORED_DIM)
        return cls(d_in, quantize_int8(reduced)[1], mean, comps)

    def project(self, raw: F32Array) -> F32Array:
        """The rows of ``raw`` in the stored space, before quantization."""
        if self.components is None or self.mean is None:
            return raw
        return np.asarray((raw - self.mean) @ self.components.T, dtype=np.float32)

    def codes(self, raw: F32Array) -> Codes:
        """int8 codes of the rows of ``raw`` (N, dim_in); values beyond the range are clipped."""
        q = np.rint(self.project(raw) / np.float32(self.scale))
        out: Codes = np.clip(q, -127, 127).astype(np.int8)
        return out

    def to_bytes(self) -> bytes:
        head = _HEAD.pack(self.dim_in, 0 if self.components is None else self.dim, self.scale)
        if self.components is None or self.mean is None:
            return head
        f4 = "<f4"
        return head + self.mean.astype(f4).tobytes() + self.components.astype(f4).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingBasis:
        """Inverse of :meth:`to_bytes` (InvalidInputError for other bytes)."""
        try:
            d_in, dim, scale = _HEAD.unpack_from(data, 0)
            if not (0 < d_in <= MAX_EMBEDDING_DIM and dim <= STORED_DIM and scale > 0):
                raise ValueError("out of range")
            if dim == 0:
                if len(data) != _HEAD.size:
                    raise ValueError("trailing bytes")
                return cls(d_in, scale)
            if len(data) != _HEAD.size + 4 * d_in * (dim + 1):
                raise ValueError("wrong length")
            mean = np.frombuffer(data, "<f4", d_in, _HEAD.size).astype(np.float32)
            comps = np.frombuffer(data, "<f4", d_in * dim, _HEAD.size + 4 * d_in)
            return cls(d_in, scale, mean, comps.astype(np.float32).reshape(dim, d_in))
        except (struct.error, ValueError) as exc:
            raise InvalidInputError(f"not an embedding basis: {exc}") from None


def check_embeddings(keys: Sequence[str], rows: Sequence[Sequence[float]]) -> F32Array | None:
    """The embeddings of the tasks ``keys`` as an (N, D) array, or None when no task has one.

    Raises:
        InvalidInputError: some tasks have one and others not, dimensions
            differ, a dimension above ``MAX_EMBEDDING_DIM``, or a value that
            is not finite (or not finite as a float32).
    """
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if not len(lengths) or not lengths.any():
        return None
    if not lengths.all():
        with_one = int(np.argmax(lengths > 0))
        without = int(np.argmin(lengths > 0))
        raise InvalidInputError(
            f"task {shorten(keys[without])} has no embedding, but task "
            f"{shorten(keys[with_one])} has one: a pool's tasks have embeddings all or none"
        )
    d = int(lengths[0])
    if not (lengths == d).all():
        j = int(np.argmax(lengths != d))
        raise InvalidInputError(
            f"task {shorten(keys[j])} has an embedding of dimension {int(lengths[j])}, task "
            f"{shorten(keys[0])} one of dimension {d}: all tasks' embeddings have one dimension"
        )
    if d > MAX_EMBEDDING_DIM:
        raise InvalidInputError(
            f"embeddings have {d} dimensions; at most {MAX_EMBEDDING_DIM} are taken "
            "(bots embed --dim reduces them)"
        )
    a = np.array([list(r) for r in rows], dtype=np.float64)
    bad = ~(np.abs(a) <= _F32_MAX)  # NaN, infinities and values float32 cannot hold
    if bad.any():
        j = int(np.argmax(bad.any(axis=1)))
        v = float(a[j][np.argmax(bad[j])])
        raise InvalidInputError(
            f"task {shorten(keys[j])}: embedding values must be finite, got {v}"
            if not math.isfinite(v)
            else f"task {shorten(keys[j])}: embedding value {v:g} is beyond float32's range"
        )
    return a.astype(np.float32)

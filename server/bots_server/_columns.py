"""Compact, compressed encoding of immutable task columns (Redis task chunks)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from bots_core import InvalidInputError, KeyTable, PoolState

FloatArray = npt.NDArray[np.float64]
Codes = npt.NDArray[np.int8]

_MAGIC = b"BTC1"
_MAGIC_CODES = b"BTC2"  # the same, then the embedding width (u2) and the int8 codes


@dataclass
class Columns:
    """Keys, reference rates (NaN = unknown), priors and embedding codes of consecutive tasks.

    ``embedding`` is None for a pool without embeddings, else (n, d) int8 codes.
    """

    keys: KeyTable
    weak: FloatArray
    strong: FloatArray
    prior_alpha: FloatArray
    prior_beta: FloatArray
    embedding: Codes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.keys, KeyTable):
            self.keys = KeyTable.of(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of_state(cls, st: PoolState, lo: int = 0, hi: int | None = None) -> Columns:
        """The columns of tasks ``lo:hi`` of a pool (views where slicing gives them)."""
        hi = st.task_count if hi is None else hi
        codes = st.embedding_codes
        return cls(
            st.keys[lo:hi], st.weak[lo:hi], st.strong[lo:hi], st.alpha0[lo:hi], st.beta0[lo:hi],
            None if codes is None else codes[lo:hi],
        )  # fmt: skip

    @classmethod
    def empty(cls) -> Columns:
        z = np.zeros(0)
        return cls(KeyTable(), z, z.copy(), z.copy(), z.copy())

    def slice(self, lo: int, hi: int) -> Columns:
        return Columns(
            self.keys[lo:hi],
            self.weak[lo:hi],
            self.strong[lo:hi],
            self.prior_alpha[lo:hi],
            self.prior_beta[lo:hi],
            None if self.embedding is None else self.embedding[lo:hi],
        )

    def concat(self, other: Columns) -> Columns:
        return Columns.join([self, other])

    def encode(self) -> bytes:
        """zlib-compressed: count, four float64 columns, key lengths, UTF-8 keys[, width, codes]."""
        blob, key_lengths = self.keys.to_bytes()
        lengths = key_lengths.astype("<u2")
        parts = [
            struct.pack("<I", len(self.keys)),
            *(
                np.ascontiguousarray(a, dtype="<f8").tobytes()
                for a in (self.weak, self.strong, self.prior_alpha, self.prior_beta)
            ),
            lengths.tobytes(),
            blob,
        ]
        if self.embedding is None:
            return _MAGIC + zlib.compress(b"".join(parts), 6)
        codes = np.ascontiguousarray(self.embedding, dtype=np.int8)
        parts += [struct.pack("<H", codes.shape[1]), codes.tobytes()]
        return _MAGIC_CODES + zlib.compress(b"".join(parts), 6)

    @classmethod
    def decode(cls, data: bytes) -> Columns:
        with_codes = data.startswith(_MAGIC_CODES)
        if not (with_codes or data.startswith(_MAGIC)):
            raise InvalidInputError("corrupt task chunk")
        body = zlib.decompress(data[len(_MAGIC) :])
        (n,) = struct.unpack_from("<I", body, 0)
        pos = 4
        cols = []
        for _ in range(4):
            cols.append(np.frombuffer(body, dtype="<f8", count=n, offset=pos).astype(np.float64))
            pos += 8 * n
        lengths = np.frombuffer(body, dtype="<u2", count=n, offset=pos)
        pos += 2 * n
        end = pos + int(lengths.sum(dtype=np.int64))
        codes = None
        if with_codes and end + 2 <= len(body):
            (d,) = struct.unpack_from("<H", body, end)
            if len(body) != end + 2 + n * d:
                raise InvalidInputError("corrupt task chunk")
            codes = np.frombuffer(body, np.int8, n * d, end + 2).reshape(n, d).copy()
        elif end != len(body):
            raise InvalidInputError("corrupt task chunk")
        try:
            keys = KeyTable.from_bytes(body[pos:end], lengths)
        except ValueError:
            raise InvalidInputError("corrupt task chunk") from None
        return cls(keys, cols[0], cols[1], cols[2], cols[3], codes)

    @classmethod
    def join(cls, parts: Sequence[Columns]) -> Columns:
        """The columns of ``parts`` one after the other (one copy, not one per part)."""
        if not parts:
            return cls.empty()
        keys = KeyTable.concat([part.keys for part in parts])
        # A pool's tasks have codes all or none; an empty part may lack them.
        coded = [c.embedding for c in parts if c.embedding is not None or len(c)]
        codes: Codes | None = None
        if coded and all(e is not None for e in coded):
            codes = np.concatenate(coded)  # type: ignore[arg-type]
        elif any(e is not None for e in coded):
            raise ValueError("columns with and without embedding codes do not join")
        return cls(
            keys,
            np.concatenate([c.weak for c in parts]),
            np.concatenate([c.strong for c in parts]),
            np.concatenate([c.prior_alpha for c in parts]),
            np.concatenate([c.prior_beta for c in parts]),
            codes,
        )


def columns_of(specs: Sequence[object]) -> Columns:
    """Columns of TaskSpec-like objects (key, weak, strong, prior_alpha, prior_beta)."""
    return Columns(
        KeyTable.of(s.key for s in specs),  # type: ignore[attr-defined]
        np.array([s.weak for s in specs], dtype=np.float64),  # type: ignore[attr-defined]
        np.array([s.strong for s in specs], dtype=np.float64),  # type: ignore[attr-defined]
        np.array([s.prior_alpha for s in specs], dtype=np.float64),  # type: ignore[attr-defined]
        np.array([s.prior_beta for s in specs], dtype=np.float64),  # type: ignore[attr-defined]
    )

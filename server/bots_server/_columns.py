"""Compact, compressed encoding of immutable task columns (Redis task chunks)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from bots_core import InvalidInputError, KeyTable

FloatArray = npt.NDArray[np.float64]

_MAGIC = b"BTC1"


@dataclass
class Columns:
    """Keys, reference rates (NaN = unknown) and priors of consecutive tasks."""

    keys: KeyTable
    weak: FloatArray
    strong: FloatArray
    prior_alpha: FloatArray
    prior_beta: FloatArray

    def __post_init__(self) -> None:
        if not isinstance(self.keys, KeyTable):
            self.keys = KeyTable.of(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

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
        )

    def concat(self, other: Columns) -> Columns:
        return Columns(
            self.keys + other.keys,
            np.concatenate([self.weak, other.weak]),
            np.concatenate([self.strong, other.strong]),
            np.concatenate([self.prior_alpha, other.prior_alpha]),
            np.concatenate([self.prior_beta, other.prior_beta]),
        )

    def encode(self) -> bytes:
        """zlib-compressed: count, four float64 columns, key lengths, UTF-8 keys."""
        blob, key_lengths = self.keys.to_bytes()
        lengths = key_lengths.astype("<u2")
        body = b"".join(
            [
                struct.pack("<I", len(self.keys)),
                *(
                    np.ascontiguousarray(a, dtype="<f8").tobytes()
                    for a in (self.weak, self.strong, self.prior_alpha, self.prior_beta)
                ),
                lengths.tobytes(),
                blob,
            ]
        )
        return _MAGIC + zlib.compress(body, 6)

    @classmethod
    def decode(cls, data: bytes) -> Columns:
        if not data.startswith(_MAGIC):
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
        if int(lengths.sum(dtype=np.int64)) != len(body) - pos:
            raise InvalidInputError("corrupt task chunk")
        try:
            keys = KeyTable.from_bytes(body[pos:], lengths)
        except ValueError:
            raise InvalidInputError("corrupt task chunk") from None
        return cls(keys, cols[0], cols[1], cols[2], cols[3])

    @classmethod
    def join(cls, parts: Sequence[Columns]) -> Columns:
        """The columns of ``parts`` one after the other (one copy, not one per part)."""
        if not parts:
            return cls.empty()
        keys = KeyTable.concat([part.keys for part in parts])
        return cls(
            keys,
            np.concatenate([c.weak for c in parts]),
            np.concatenate([c.strong for c in parts]),
            np.concatenate([c.prior_alpha for c in parts]),
            np.concatenate([c.prior_beta for c in parts]),
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

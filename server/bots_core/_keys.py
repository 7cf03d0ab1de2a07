"""Task keys held compactly: one UTF-8 buffer with end offsets, and a hash index over it.

A pool of a million tasks held as a ``list[str]`` and a ``dict[str, int]``
costs about 160 bytes a task and seconds to build when a replica loads it.
:class:`KeyTable` holds the same keys in ``len(key) + 8`` bytes and is built
from stored bytes without creating a string per key; :class:`KeyIndex` finds
a key's position by binary search over sorted 64-bit hashes (12 bytes a
task), built on first use.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


class KeyTable(Sequence[str]):
    """An append-only sequence of task keys (str), stored as UTF-8 bytes and end offsets."""

    __slots__ = ("_buf", "_ends", "_n")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends: IntArray = np.zeros(0, dtype=np.int64)
        self._n = 0

    # ------------------------------------------------------------ building
    @classmethod
    def of(cls, keys: Iterable[str]) -> KeyTable:
        """A table of ``keys`` (a KeyTable is copied)."""
        table = cls()
        table.extend(keys)
        return table

    @classmethod
    def from_bytes(cls, blob: bytes, lengths: npt.NDArray[Any]) -> KeyTable:
        """Keys stored one after the other with their byte lengths; no string is created.

        Raises:
            ValueError: the lengths do not add up to the bytes, or the bytes
                are not UTF-8.
        """
        ends = np.cumsum(np.asarray(lengths, dtype=np.int64), dtype=np.int64)
        if (int(ends[-1]) if len(ends) else 0) != len(blob):
            raise ValueError("key lengths do not add up to the key bytes")
        if not blob.isascii():
            blob.decode("utf-8")  # one pass over the whole buffer: raises on bad bytes
        table = cls()
        table._buf = bytearray(blob)
        table._ends = ends
        table._n = len(ends)
        return table

    @classmethod
    def concat(cls, tables: Sequence[KeyTable]) -> KeyTable:
        """The keys of ``tables`` one after the other, in buffers of exactly their size."""
        parts = [t.to_bytes() for t in tables]
        table = cls()
        table._buf = bytearray(b"".join(p[0] for p in parts))
        lengths = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        table._ends = np.cumsum(lengths, dtype=np.int64)
        table._n = len(lengths)
        return table

    def extend(self, keys: Iterable[str]) -> None:
        """Appends keys: amortised O(what is added)."""
        if isinstance(keys, KeyTable):
            blob, lengths = keys.to_bytes()
        else:
            raw = [k.encode("utf-8") for k in keys]
            blob, lengths = b"".join(raw), np.fromiter(map(len, raw), np.int64, len(raw))
        m = len(lengths)
        if not m:
            return
        base = len(self._buf)
        self._buf += blob
        if self._n + m > len(self._ends):
            grown = np.empty(max(self._n + m, 2 * len(self._ends)), dtype=np.int64)
            grown[: self._n] = self._ends[: self._n]
            self._ends = grown
        self._ends[self._n : self._n + m] = np.cumsum(lengths, dtype=np.int64) + base
        self._n += m

    def append(self, key: str) -> None:
        self.extend([key])

    # ------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> KeyTable: ...

    def __getitem__(self, i: int | slice) -> str | KeyTable:
        if isinstance(i, slice):
            lo, hi, step = i.indices(self._n)
            if step != 1:
                return KeyTable.of([self[j] for j in range(lo, hi, step)])
            hi = max(lo, hi)
            start = int(self._ends[lo - 1]) if lo else 0
            end = int(self._ends[hi - 1]) if hi else 0
            out = KeyTable()
            out._buf = self._buf[start:end]
            out._ends = self._ends[lo:hi] - start
            out._n = hi - lo
            return out
        j = int(i)
        if j < 0:
            j += self._n
        if not 0 <= j < self._n:
            raise IndexError("key index out of range")
        start = int(self._ends[j - 1]) if j else 0
        return self._buf[start : int(self._ends[j])].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_list())

    def to_list(self) -> list[str]:
        """Every key as a str (one decode of the buffer when it is ASCII)."""
        if not self._n:
            return []
        ends = self._ends[: self._n].tolist()
        starts = [0, *ends[:-1]]
        if self._buf.isascii():
            text = self._buf.decode("ascii")
            return [text[s:e] for s, e in zip(starts, ends)]
        buf = self._buf
        return [buf[s:e].decode("utf-8") for s, e in zip(starts, ends)]

    def to_bytes(self) -> tuple[bytes, IntArray]:
        """(the keys' bytes one after the other, their lengths)."""
        ends = self._ends[: self._n]
        return bytes(self._buf[: int(ends[-1]) if self._n else 0]), np.diff(ends, prepend=0)

    @property
    def nbytes(self) -> int:
        """Bytes held (buffer and offsets, spare capacity included)."""
        return len(self._buf) + self._ends.nbytes

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyTable):
            a, b = self.to_bytes(), other.to_bytes()
            return a[0] == b[0] and bool(np.array_equal(a[1], b[1]))
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self._n and self.to_list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __add__(self, other: Iterable[str]) -> KeyTable:
        out = KeyTable.of(self)
        out.extend(other)
        return out

    def __repr__(self) -> str:
        head = ", ".join(repr(k) for k in itertools.islice(self, 3))
        return f"KeyTable([{head}{', ...' if self._n > 3 else ''}], {self._n} keys)"


class KeyIndex(Mapping[str, int]):
    """Key -> position in a :class:`KeyTable`, by binary search over sorted key hashes.

    Hashes are Python's own string hashes (this process only; never stored).
    Keys added after the index was built sit in a small dict until it is
    folded into the sorted arrays (when it holds an eighth of the keys), so
    growing costs amortised O(added log pool).
    """

    __slots__ = ("_extra", "_hashes", "_order", "_table")

    def __init__(self, table: KeyTable) -> None:
        self._table = table
        self._hashes: IntArray = np.zeros(0, dtype=np.int64)
        self._order: npt.NDArray[np.int32] | IntArray = np.zeros(0, dtype=np.int32)
        self._extra: dict[str, int] = {}
        self._fold(table.to_list(), 0)

    def _fold(self, keys: Sequence[str], first: int) -> None:
        """Merges the hashes of ``keys`` (positions ``first``...) into the sorted arrays."""
        hashes = np.fromiter(map(hash, keys), np.int64, len(keys))
        if len(self._hashes):
            hashes = np.concatenate([self._hashes, hashes])
            pos = np.concatenate([self._order, np.arange(first, first + len(keys))])
        else:
            pos = np.arange(first, first + len(keys))
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        kind = np.int32 if len(pos) < 2**31 else np.int64
        self._order = pos[order].astype(kind)
        self._extra = {}

    def add(self, first: int, keys: Sequence[str]) -> None:
        """Registers ``keys``, which the table holds from position ``first`` on."""
        self._extra.update(zip(keys, range(first, first + len(keys))))
        if len(self._extra) > max(1024, len(self._hashes) // 8):
            extra = sorted(self._extra.items(), key=lambda kv: kv[1])
            self._fold([k for k, _ in extra], extra[0][1])

    def get(self, key: str, default: Any = None) -> Any:
        if not isinstance(key, str):
            return default
        j = self._extra.get(key)
        if j is not None:
            return j
        h = hash(key)
        lo = int(np.searchsorted(self._hashes, h))
        while lo < len(self._hashes) and self._hashes[lo] == h:
            pos = int(self._order[lo])
            if self._table[pos] == key:
                return pos
            lo += 1
        return default

    def lookup(self, keys: Sequence[str]) -> IntArray:
        """Positions of ``keys``, -1 for a key not in the table (vectorised)."""
        m = len(keys)
        out = np.full(m, -1, dtype=np.int64)
        if not m:
            return out
        hashes = np.fromiter(map(hash, keys), np.int64, m)
        n = len(self._hashes)
        at = np.searchsorted(self._hashes, hashes)
        found = (at < n) & (self._hashes[np.minimum(at, max(n - 1, 0))] == hashes) if n else at < 0
        table, extra = self._table, self._extra
        for j in range(m):
            key = keys[j]
            if found[j]:
                lo = int(at[j])
                while lo < n and self._hashes[lo] == hashes[j]:
                    pos = int(self._order[lo])
                    if table[pos] == key:
                        out[j] = pos
                        break
                    lo += 1
            if out[j] < 0 and extra:
                out[j] = extra.get(key, -1)
        return out

    def __getitem__(self, key: str) -> int:
        pos = self.get(key)
        if pos is None:
            raise KeyError(key)
        return int(pos)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._hashes) + len(self._extra)

    def duplicates(self) -> list[str]:
        """Keys the table holds more than once (positions sharing a hash, then compared)."""
        h = self._hashes
        same = np.flatnonzero(h[1:] == h[:-1])
        out: list[str] = []
        groups: dict[int, set[int]] = {}
        for j in same.tolist():  # runs of equal hashes: compare the keys themselves
            groups.setdefault(int(h[j]), set()).update((j, j + 1))
        for members in groups.values():
            keys = [self._table[int(self._order[j])] for j in sorted(members)]
            out += sorted({k for k in keys if keys.count(k) > 1})
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the sorted arrays (the dict of recent additions not counted)."""
        return self._hashes.nbytes + self._order.nbytes

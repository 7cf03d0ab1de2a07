"""The typed records that change a pool, and their one byte encoding.

Every change to a pool is one record. A record is planned by the pool runtime
(``bots_server._pool``), appended to the pool's ordered log by a store (the
journal file, or a Redis stream) and then applied. Records are frozen
dataclasses; their encoding is derived from their fields, so a new record
field needs no codec change: scalars go into a small JSON header, numpy
arrays and task columns into a binary body.

Each record carries ``time``, the planner's clock when it was made. Replaying
the same records gives the same state on every replica and after every
restart, because whatever depends on time (retention) reads this field, never
the wall clock.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, ClassVar, Union

import numpy as np
import numpy.typing as npt
from bots_core import EmbeddingBasis, InvalidInputError

from bots_server._columns import Columns

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class AddTasks:
    """New tasks appended to the task table (already validated, keys not yet present).

    ``basis`` is set on the first record that brings embeddings to a pool: the
    reduction every later task's embedding goes through (its codes are in ``tasks``).
    """

    TAG: ClassVar[int] = 1
    time: float
    tasks: Columns
    basis: EmbeddingBasis | None = None


@dataclasses.dataclass(frozen=True)
class OpenSelection:
    """A drawn batch: selection ``number`` opens and waits for its evidence."""

    TAG: ClassVar[int] = 2
    time: float
    number: int
    run_id: str
    step: int
    indices: IntArray
    sampled: FloatArray
    means: FloatArray
    expected_trials: float
    version: int
    deadline: float


@dataclasses.dataclass(frozen=True)
class Report:
    """Evidence of one ReportOutcomes request, summed per task, indices sorted.

    ``selection`` is the selection number, or -1 for a standalone step.
    """

    TAG: ClassVar[int] = 3
    time: float
    request_id: str
    digest: str
    run_id: str  # the run of a standalone step ("" when the report names a selection)
    selection: int
    indices: IntArray
    successes: FloatArray
    trials: FloatArray
    final: bool


@dataclasses.dataclass(frozen=True)
class Expire:
    """Selection ``selection`` passed its deadline and closes with what it has."""

    TAG: ClassVar[int] = 4
    time: float
    selection: int


Record = Union[AddTasks, OpenSelection, Report, Expire]  # noqa: UP007 (runtime alias, py3.10)

_BY_TAG: dict[int, type[Any]] = {c.TAG: c for c in (AddTasks, OpenSelection, Report, Expire)}
_ARRAY_DTYPES = {
    "indices": "<i8",
    "sampled": "<f8",
    "means": "<f8",
    "successes": "<f8",
    "trials": "<f8",
}
_HEAD = struct.Struct("<BI")  # tag, JSON header length


def encode(record: Record) -> bytes:
    """The record as bytes: tag, JSON scalars, then arrays and columns in field order."""
    header: dict[str, Any] = {}
    body: list[bytes] = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, np.ndarray):
            raw = np.ascontiguousarray(value, dtype=_ARRAY_DTYPES[f.name]).tobytes()
            header[f.name] = len(raw)
            body.append(raw)
        elif isinstance(value, (Columns, EmbeddingBasis)):
            raw = value.encode() if isinstance(value, Columns) else value.to_bytes()
            header[f.name] = len(raw)
            body.append(raw)
        else:
            header[f.name] = value
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return b"".join([_HEAD.pack(record.TAG, len(head)), head, *body])


def decode(data: bytes) -> Record:
    """Inverse of :func:`encode` (InvalidInputError for bytes that are not a record)."""
    try:
        tag, hlen = _HEAD.unpack_from(data, 0)
        cls = _BY_TAG[tag]
        pos = _HEAD.size
        header = json.loads(data[pos : pos + hlen])
        pos += hlen
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in header and f.default is not dataclasses.MISSING:
                continue  # a field newer than the record
            v = header[f.name]
            if f.name in _ARRAY_DTYPES:
                raw = data[pos : pos + v]
                pos += v
                values[f.name] = np.frombuffer(raw, dtype=_ARRAY_DTYPES[f.name]).astype(
                    np.dtype(_ARRAY_DTYPES[f.name]).newbyteorder("=")
                )
            elif f.name == "tasks":
                values[f.name] = Columns.decode(data[pos : pos + v])
                pos += v
            elif f.name == "basis" and v is not None:
                values[f.name] = EmbeddingBasis.from_bytes(data[pos : pos + v])
                pos += v
            else:
                values[f.name] = v
        if pos != len(data):
            raise ValueError("trailing bytes")
        record: Record = cls(**values)
        return record
    except InvalidInputError:
        raise
    except (KeyError, ValueError, TypeError, struct.error) as exc:
        raise InvalidInputError(f"not a pool record: {exc}") from None

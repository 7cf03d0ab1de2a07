"""Append-only journal of records and atomic snapshot files for the embedded store.

A journal file is a sequence of frames ``<u32 length><u32 crc32><json>``. A
crash can leave a torn last frame; replay stops there and truncates it. A
frame is acknowledged only after it was written (and fsynced, by default), so
a torn frame was never acknowledged.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FRAME = struct.Struct("<II")


class Journal:
    """An open journal file that frames can be appended to."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        """Writes one record durably (OSError when the disk refuses it).

        Keys starting with ``_`` are in-memory companions of the record and are
        not written.
        """
        saved = {k: v for k, v in record.items() if not k.startswith("_")}
        payload = json.dumps(saved, separators=(",", ":"), allow_nan=False).encode()
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        written = os.write(self._fd, frame)
        if written != len(frame):
            raise OSError(f"short write to {self.path} ({written} of {len(frame)} bytes)")
        if self.fsync:
            os.fdatasync(self._fd)

    def truncate(self) -> None:
        """Empties the journal (after a snapshot made its records redundant)."""
        os.ftruncate(self._fd, 0)
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def replay(path: Path) -> Iterator[dict[str, Any]]:
    """Yields the records of a journal file; cuts off a torn or corrupt tail."""
    if not path.exists():
        return
    data = path.read_bytes()
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        yield json.loads(payload)
        pos = start + length
    if pos < len(data):
        with open(path, "r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Makes a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

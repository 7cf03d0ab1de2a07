"""A pool's durable record log on disk: journal segments and checksummed snapshots.

A journal segment ``journal-<first seq>.log`` is a sequence of frames::

    b"BJR1" <u32 payload length> <u32 crc32 of seq + payload> <u64 seq> <payload>

A frame is acknowledged only after it was written and fsynced. When a write
or an fsync fails, the segment is cut back to its last acknowledged frame
before the error is answered, so a refused record never stays in the file
and its sequence number is reused cleanly. If even that fails the journal is
*broken*: the pool stops taking changes rather than guess.

Reading tells a torn tail from damage. A crash can leave one incomplete frame
at the very end of the newest segment; it was never acknowledged and is cut.
Anything else that does not check out (a bad frame followed by good ones, a
gap in sequence numbers, a bad frame in an older segment) is damage: the
reader reports the file and offset and changes nothing, and only the explicit
``bots recover`` command (:func:`bots_server._embedded.recover_pool`) cuts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"BJR1"
_FRAME = struct.Struct("<4sIIQ")
_SEGMENT = re.compile(r"^journal-(\d{20})\.log$")
MAX_RECORD = 1 << 31


class JournalBroken(OSError):
    """The journal could not be restored to its acknowledged frames after a failure."""


@dataclass(frozen=True)
class Damage:
    """Where a journal or snapshot stops being trustworthy."""

    path: Path
    offset: int
    reason: str

    def describe(self) -> str:
        return f"{self.path} at byte {self.offset}: {self.reason}"


def segment_name(first_seq: int) -> str:
    return f"journal-{first_seq:020d}.log"


def segments(directory: Path) -> list[tuple[int, Path]]:
    """The journal segments of a pool directory, oldest first."""
    out = []
    for p in directory.iterdir():
        m = _SEGMENT.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def frame(seq: int, payload: bytes) -> bytes:
    seq_bytes = struct.pack("<Q", seq)
    crc = zlib.crc32(payload, zlib.crc32(seq_bytes))
    return _FRAME.pack(_MAGIC, len(payload), crc, seq) + payload


class Journal:
    """The open newest segment of a pool's journal."""

    def __init__(self, directory: Path, first_seq: int, *, fsync: bool = True) -> None:
        self.dir = directory
        self.fsync = fsync
        self.path = directory / segment_name(first_seq)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        if fsync:
            fsync_dir(directory)

    def append(self, seq: int, payload: bytes) -> None:
        """Writes one frame durably; on failure cuts the segment back and raises OSError."""
        data = frame(seq, payload)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError:
            self._cut_back()
            raise
        self._size += len(data)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            raise JournalBroken(
                f"{self.path}: could not cut a failed write back to byte {self._size}: {exc}"
            ) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_segments(directory: Path) -> tuple[list[tuple[int, bytes]], Damage | None]:
    """Every intact (seq, payload) of a pool's journal, and the first damage found.

    A torn frame at the end of the newest segment is cut from the file (it was
    never acknowledged). Records after a damage are not returned.
    """
    segs = segments(directory)
    out: list[tuple[int, bytes]] = []
    for k, (first, path) in enumerate(segs):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            got = _frame_at(data, pos)
            if got is None:
                if k == len(segs) - 1 and _next_frame(data, pos + 1) is None:
                    log.warning("cutting a torn journal tail: %s from byte %d", path, pos)
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                        os.fsync(f.fileno())
                    break
                return out, Damage(path, pos, "a frame fails its checksum")
            seq, payload, end = got
            expected = out[-1][0] + 1 if out else first
            if seq != expected:
                return out, Damage(path, pos, f"record {seq} where {expected} was expected")
            out.append((seq, payload))
            pos = end
    return out, None


def _frame_at(data: bytes, pos: int) -> tuple[int, bytes, int] | None:
    if pos + _FRAME.size > len(data):
        return None
    magic, length, crc, seq = _FRAME.unpack_from(data, pos)
    start = pos + _FRAME.size
    if magic != _MAGIC or length > MAX_RECORD or start + length > len(data):
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq))) != crc:
        return None
    return seq, payload, start + length


def _next_frame(data: bytes, pos: int) -> int | None:
    """Offset of the next intact frame at or after ``pos`` (None when there is none)."""
    while True:
        at = data.find(_MAGIC, pos)
        if at < 0:
            return None
        if _frame_at(data, at) is not None:
            return at
        pos = at + 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Makes a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

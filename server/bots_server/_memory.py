"""How a server process hands memory back to the OS (glibc; elsewhere these do nothing).

A pool load decodes replies and chunks about as big as the pool's arrays and
frees them again. With glibc's default the threshold above which ``malloc``
maps a block of its own grows to the largest block freed so far (up to
32 MiB), so those temporaries come from the heap, and numpy asks for
transparent huge pages on every array of 4 MiB or more; freed huge pages in
the middle of the heap stay resident even after ``malloc_trim``. At 1M tasks
that was about 46 B/task of a replica's resident set that held nothing
(docs/benchmarks.md). ``return_large_blocks`` pins the threshold at 1 MiB:
big arrays get their own mappings, which go back to the OS when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

MMAP_THRESHOLD = 1 << 20  # blocks this big or bigger are mapped on their own
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@functools.cache
def return_large_blocks() -> bool:
    """Makes ``malloc`` map every block of ``MMAP_THRESHOLD`` or more on its own.

    Called once as a server starts (``start_server``); later calls do
    nothing. Returns whether the allocator took the setting (False where
    there is no glibc ``mallopt``).
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    return bool(mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD)))


def release_free_memory() -> None:
    """Hands freed heap pages back to the OS (glibc ``malloc_trim``)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)

"""A server process maps big blocks on their own, so that freed load buffers leave its RSS."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest

_LIBC = ctypes.util.find_library("c")
pytestmark = pytest.mark.skipif(
    _LIBC is None or not hasattr(ctypes.CDLL(_LIBC), "mallinfo2"),
    reason="needs glibc (mallopt, mallinfo2): elsewhere return_large_blocks does nothing",
)

PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys
    import numpy as np
    from bots_server._memory import return_large_blocks

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = Info
    took = None
    if sys.argv[1] == "pinned":
        took = return_large_blocks()
    elif sys.argv[1] == "server":
        import tempfile
        from bots_server._app import start_server
        from bots_server._settings import ServerSettings

        data = tempfile.mkdtemp()
        running = start_server(
            ServerSettings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=data)
        )
        running.stop()
    big = np.ones(2 << 20)  # 16 MiB, freed: glibc's own threshold rises to this size
    del big
    before = libc.mallinfo2().hblks
    block = np.ones(1 << 18)  # 2 MiB, as a pool load's temporaries are
    print(took, libc.mallinfo2().hblks - before)
    """
)


def _mapped_blocks(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_big_blocks_get_their_own_mapping_once_pinned() -> None:
    took, mapped = _mapped_blocks("pinned")
    assert took == "True"
    assert mapped == 1


def test_without_the_setting_glibc_puts_them_in_the_heap() -> None:
    # What the setting is for: after a big block was freed, glibc serves
    # blocks up to that size from the heap, where freed huge pages stay resident.
    took, mapped = _mapped_blocks("default")
    assert took == "None"
    assert mapped == 0


def test_a_started_server_has_pinned_it() -> None:
    _, mapped = _mapped_blocks("server")
    assert mapped == 1

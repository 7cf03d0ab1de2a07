"""Checkpoint images: steps pending in ``PoolState.lazy`` survive bit for bit, old images load."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from bots_core import PoolConfig, PoolState, aggregate, apply_step, select_batch
from bots_server._pool import PoolRuntime, Retention
from bots_server._snapshot import _HEAD, _MAGIC, _MAGIC_V1, capture, decode, encode


def runtime(steps: int) -> PoolRuntime:
    rng = np.random.default_rng(1)
    n = 500
    weak = rng.uniform(0.0, 0.3, n)
    state = PoolState.from_columns(
        "p", PoolConfig(), [f"t{i}" for i in range(n)], weak, weak + 0.5, np.ones(n), np.ones(n)
    )
    for _ in range(steps):
        picked = rng.choice(n, 16, replace=False)
        apply_step(
            state, aggregate(state, [(f"t{i}", float(rng.integers(0, 9)), 8.0) for i in picked])
        )
    return PoolRuntime(state, "inc-1", Retention())


def test_an_image_with_pending_steps_decodes_to_the_same_bits():
    rt = runtime(20)
    st = rt.engine()
    assert not st.lazy.identity
    back = decode(encode(capture(rt, with_tasks=True)), Retention()).engine()
    assert back.lazy == st.lazy
    np.testing.assert_array_equal(back.stored_alpha, st.stored_alpha)
    np.testing.assert_array_equal(back.beta, st.beta)
    # And both go on identically: same step, same draw.
    outcomes = [(f"t{i}", 3.0, 8.0) for i in range(0, 40, 3)]
    apply_step(st, aggregate(st, outcomes))
    apply_step(back, aggregate(back, outcomes))
    np.testing.assert_array_equal(back.stored_alpha, st.stored_alpha)
    np.testing.assert_array_equal(select_batch(back, 8, 5).indices, select_batch(st, 8, 5).indices)


def test_an_image_written_before_the_header_was_compressed_still_loads():
    rt = runtime(3)
    data = encode(capture(rt, with_tasks=True))
    crc, hlen = _HEAD.unpack_from(data, len(_MAGIC))
    payload = data[len(_MAGIC) + _HEAD.size :]
    head = zlib.decompress(payload[:hlen])
    old_payload = head + payload[hlen:]
    old = _MAGIC_V1 + _HEAD.pack(zlib.crc32(old_payload), len(head)) + old_payload
    assert struct.unpack_from("<I", old, len(_MAGIC_V1))[0] != crc
    back = decode(old, Retention()).engine()
    np.testing.assert_array_equal(back.alpha, rt.engine().alpha)
    assert back.steps_applied == 3

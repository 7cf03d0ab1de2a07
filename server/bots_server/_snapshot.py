"""Checkpoints of a pool runtime: capture under the pool lock, encode outside it.

:func:`capture` copies what changes in place (the posteriors) and takes
references to what never does (task columns, selections, request memos are
immutable or only appended to), so the time the pool lock is held does not
grow with the number of open selections. :func:`encode` then turns the image
into checksummed bytes without the lock; :func:`decode` rebuilds a runtime.

The embedded store writes images with the task table; the Redis store keeps
the task table in separate immutable chunks and writes images without it.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from bots_core import (
    Diagnostics,
    EmbeddingBasis,
    EstimatorState,
    InvalidInputError,
    KeyTable,
    Lazy,
    PoolConfig,
    PoolState,
    RunState,
    complete_state,
)

from bots_server._columns import Codes, Columns
from bots_server._model import ReportAck, SelectionState
from bots_server._pool import PoolRuntime, RequestMemo, Retention, Selection
from bots_server._records import FloatArray, OpenSelection
from bots_server._records import decode as decode_record
from bots_server._records import encode as encode_record

_MAGIC = b"BOTSIMG2"  # the JSON header zlib-compressed (request ids and digests are hex)
_MAGIC_V1 = b"BOTSIMG1"  # images written before: the JSON header as it is
_HEAD = struct.Struct("<IQ")  # crc32 of everything after it, (compressed) header length


class CorruptImage(Exception):
    """Bytes that are not a whole, intact checkpoint."""


@dataclass(frozen=True)
class Image:
    """A consistent copy of a runtime at ``seq`` (see :func:`capture`)."""

    runtime_fields: dict[str, Any]
    engine_fields: dict[str, Any]
    alpha: FloatArray
    beta: FloatArray
    tasks: tuple[KeyTable, FloatArray, FloatArray, FloatArray, FloatArray, int, Codes | None] | None
    open: list[Selection]
    closed: list[Selection]
    memos: list[tuple[str, RequestMemo]]
    estimator: EstimatorState | None = None

    @property
    def seq(self) -> int:
        return int(self.runtime_fields["seq"])


def capture(rt: PoolRuntime, *, with_tasks: bool) -> Image:
    """The runtime's image (call with the pool lock held; cost O(pool) copies only)."""
    st = rt.engine()
    tasks = None
    if with_tasks:
        tasks = (
            st.keys,
            st.weak,
            st.strong,
            st.alpha0,
            st.beta0,
            st.task_count,
            st.embedding_codes,
        )
    return Image(
        {
            "seq": rt.seq,
            "now": rt.now,
            "incarnation": rt.incarnation,
            "selections_expired": rt.selections_expired,
            "dedup_floor": rt.dedup_floor,
            "run_seen": {r: list(v) for r, v in rt.run_seen.items()},
            "forgotten_runs": dict(rt.forgotten_runs),
        },
        st.header(),
        st.stored_alpha.copy(),
        st.stored_beta.copy(),
        tasks,
        list(rt.open.values()),
        list(rt.closed.values()),
        [*rt.standalone.items(), *rt.bound.items()],
        rt.estimator_state(),
    )


def encode(image: Image) -> bytes:
    """Checksummed bytes of an image (no lock needed)."""
    body: list[bytes] = [_f8(image.alpha), _f8(image.beta)]
    task_len = 0
    if image.tasks is not None:
        keys, weak, strong, a0, b0, n, codes = image.tasks
        coded = None if codes is None else codes[:n]
        raw = Columns(keys[:n], weak[:n], strong[:n], a0[:n], b0[:n], coded).encode()
        task_len = len(raw)
        body.append(raw)
    sels = []
    for sel in [*image.open, *image.closed]:
        rec = encode_record(sel.opened)
        body.append(rec)
        acc = sel.successes is not None and sel.trials is not None
        if acc:
            assert sel.successes is not None and sel.trials is not None
            body += [_f8(sel.successes), _f8(sel.trials)]
        closed_at = None if math.isnan(sel.closed_at) else sel.closed_at
        sels.append([len(rec), acc, closed_at, list(sel.requests)])
    memos = [
        [rid, m.digest, m.ack.selection_state.value, m.ack.steps_applied,
         m.ack.posterior_version, m.selection, m.time]
        for rid, m in image.memos
    ]  # fmt: skip
    est = image.estimator
    if est is not None:
        body += [_f8(est.sum_s), _f8(est.sum_t), _f8(est.p)]
        if est.den is not None:
            body.append(_f8(est.den))
    header = {
        "estimator": None if est is None else _estimator_fields(est),
        "runtime": image.runtime_fields,
        "engine": image.engine_fields,
        "tasks": task_len,
        "open": len(image.open),
        "selections": sels,
        "memos": memos,
    }
    head = zlib.compress(json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), 1)
    payload = head + b"".join(body)
    return _MAGIC + _HEAD.pack(zlib.crc32(payload), len(head)) + payload


def decode(data: bytes, retention: Retention, tasks: Columns | None = None) -> PoolRuntime:
    """Rebuilds a runtime; ``tasks`` supplies the table when the image has none.

    Raises:
        CorruptImage: a bad checksum, truncated or inconsistent bytes, or
            posteriors that are not finite and positive.
    """
    compressed = data.startswith(_MAGIC)
    if not (compressed or data.startswith(_MAGIC_V1)):
        raise CorruptImage("not a pool checkpoint (bad magic)")
    try:
        crc, hlen = _HEAD.unpack_from(data, len(_MAGIC))
        payload = memoryview(data)[len(_MAGIC) + _HEAD.size :]
        if zlib.crc32(payload) != crc:
            raise CorruptImage("checksum mismatch")
        head = bytes(payload[:hlen])
        return _decode(
            zlib.decompress(head) if compressed else head, payload[hlen:], retention, tasks
        )
    except CorruptImage:
        raise
    except (
        zlib.error,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        struct.error,
        InvalidInputError,
    ) as exc:
        raise CorruptImage(f"truncated or inconsistent checkpoint: {exc}") from None


def _decode(
    head: bytes, body: memoryview, retention: Retention, tasks: Columns | None
) -> PoolRuntime:
    h = json.loads(head)
    eng, rtf = h["engine"], h["runtime"]
    n = int(eng["n"])
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(body):
            raise ValueError("body shorter than its header says")
        out = bytes(body[pos : pos + size])
        pos += size
        return out

    def f8(count: int) -> FloatArray:
        nonlocal pos
        if pos + 8 * count > len(body):
            raise ValueError("body shorter than its header says")
        out = np.frombuffer(body, dtype="<f8", count=count, offset=pos).astype(np.float64)
        pos += 8 * count
        return out

    alpha, beta = f8(n), f8(n)
    if h["tasks"]:
        tasks = Columns.decode(take(h["tasks"]))
    if tasks is None or len(tasks) < n:
        raise ValueError("the checkpoint's task table is missing")
    keys = tasks.keys if len(tasks) == n else tasks.keys[:n]
    basis = None
    if "embedding" in eng:
        basis = EmbeddingBasis.from_bytes(base64.b64decode(eng["embedding"]))
    codes = None if tasks.embedding is None else tasks.embedding[:n]
    state = PoolState.from_columns(
        eng["name"], PoolConfig.from_dict(eng["config"]), keys, tasks.weak[:n],
        tasks.strong[:n], tasks.prior_alpha[:n], tasks.prior_beta[:n], alpha, beta,
        Lazy.from_json(eng.get("lazy")), codes, basis,
    )  # fmt: skip
    cap = eng["capability"]
    state.capability = math.nan if cap is None else float(cap)
    state.steps_applied = int(eng["steps_applied"])
    state.selections_opened = int(eng["selections_opened"])
    state.recent_etr.extend(float(x) for x in eng["recent_etr"])
    state.diagnostics = Diagnostics.from_json(eng["diagnostics"])
    state.runs = {r: RunState.from_json(v) for r, v in eng["runs"].items()}

    rt = PoolRuntime(state, rtf["incarnation"], retention)
    rt.seq, rt.now = int(rtf["seq"]), float(rtf["now"])
    rt.selections_expired = int(rtf["selections_expired"])
    rt.dedup_floor = float(rtf["dedup_floor"])
    rt.run_seen = {r: (float(v[0]), float(v[1])) for r, v in rtf["run_seen"].items()}
    rt.forgotten_runs = {k: (int(v[0]), int(v[1])) for k, v in rtf["forgotten_runs"].items()}
    for j, (rec_len, acc, closed_at, requests) in enumerate(h["selections"]):
        opened = decode_record(take(rec_len))
        if not isinstance(opened, OpenSelection):
            raise ValueError("a selection entry is not an OpenSelection record")
        k = len(opened.indices)
        s, t = (f8(k), f8(k)) if acc else (None, None)
        sel = Selection(opened, s, t, math.nan if closed_at is None else closed_at, tuple(requests))
        (rt.open if j < h["open"] else rt.closed)[opened.number] = sel
        if opened.run_id:
            rt.by_run[(opened.run_id, opened.step)] = opened.number
    for rid, digest, st_val, applied, version, selection, when in h["memos"]:
        ack = ReportAck(False, SelectionState(st_val), applied, version)
        memo = RequestMemo(digest, ack, selection, when)
        (rt.standalone if selection < 0 else rt.bound)[rid] = memo
    est = h.get("estimator")  # None in images written before pools carried embeddings
    if est is not None:
        k = int(est["tasks"])
        mse, both = est["mse"], est["combined_mse"]
        rt.estimator_saved = EstimatorState(
            k, int(est["origin"]), bool(est["observed"]),
            math.nan if mse is None else float(mse),
            None if not est["combined"] else math.nan if both is None else float(both),
            f8(k), f8(k), f8(k), f8(k) if est.get("den") else None,
        )  # fmt: skip
        rt.estimator_saved = complete_state(state, rt.estimator_saved)
    if pos != len(body):
        raise ValueError("trailing bytes after the checkpoint")
    if state.lazy.sim and state.sim_terms is None:
        raise ValueError("a pending similarity term without the estimator state it reads")
    # Read only now: pending steps may read the similarity terms restored just above.
    a, b = state.alpha, state.beta
    if n and not (np.all(np.isfinite(a) & (a > 0)) and np.all(np.isfinite(b) & (b > 0))):
        raise CorruptImage("posteriors that are not finite and positive")
    return rt


def _estimator_fields(est: EstimatorState) -> dict[str, Any]:
    """The scalars of an estimator's state as JSON values (NaN as null)."""

    def num(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else x

    return {
        "tasks": est.tasks,
        "origin": est.origin,
        "observed": est.observed,
        "mse": num(est.mse),
        "combined": est.combined_mse is not None,
        "combined_mse": num(est.combined_mse),
        "den": est.den is not None,
    }


def _f8(a: FloatArray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()

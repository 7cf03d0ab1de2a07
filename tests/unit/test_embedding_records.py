"""Embedding codes in task columns and AddTasks records; older encodings still load."""

from __future__ import annotations

import json
import struct

import numpy as np
from bots_core import EmbeddingBasis, KeyTable
from bots_server._columns import Columns
from bots_server._records import AddTasks, decode, encode


def columns(n: int, codes: bool) -> Columns:
    z = np.full(n, np.nan)
    emb = np.arange(n * 4, dtype=np.int64).reshape(n, 4).astype(np.int8) if codes else None
    return Columns(KeyTable.of(f"k{i}" for i in range(n)), z, z.copy(), np.ones(n), np.ones(n), emb)


def test_columns_carry_codes_and_keep_the_old_encoding_without_them():
    plain = columns(5, codes=False).encode()
    assert plain.startswith(b"BTC1")  # what chunks written before embeddings look like
    assert Columns.decode(plain).embedding is None
    coded = Columns.decode(columns(5, codes=True).encode())
    assert coded.embedding is not None
    np.testing.assert_array_equal(coded.embedding, columns(5, codes=True).embedding)
    joined = Columns.join([Columns.empty(), coded.slice(0, 2), coded.slice(2, 5)])
    np.testing.assert_array_equal(joined.embedding, coded.embedding)


def test_an_add_tasks_record_brings_its_basis_and_old_records_decode_without_one():
    basis = EmbeddingBasis.fit(np.random.default_rng(0).normal(size=(9, 40)).astype(np.float32))
    rec = decode(encode(AddTasks(1.5, columns(3, codes=True), basis)))
    assert isinstance(rec, AddTasks) and rec.basis is not None
    assert rec.basis.to_bytes() == basis.to_bytes()
    # A record written before the field existed: its JSON header has no "basis".
    raw = encode(AddTasks(2.0, columns(3, codes=False)))
    tag, hlen = struct.unpack_from("<BI", raw, 0)
    header = json.loads(raw[5 : 5 + hlen])
    del header["basis"]
    head = json.dumps(header, separators=(",", ":")).encode()
    old = struct.pack("<BI", tag, len(head)) + head + raw[5 + hlen :]
    back = decode(old)
    assert isinstance(back, AddTasks) and back.basis is None and len(back.tasks) == 3

"""KeyTable and KeyIndex: the compact key store behaves as a list of str and a dict."""

from __future__ import annotations

import numpy as np
import pytest
from bots_core import KeyIndex, KeyTable

KEYS = ["a", "bb", "ünï", "", "t-42", "日本", "x" * 300]


def test_a_key_table_reads_like_the_list_it_was_built_from():
    table = KeyTable.of(KEYS)
    assert len(table) == len(KEYS)
    assert [table[i] for i in range(len(KEYS))] == KEYS
    assert table[-1] == KEYS[-1]
    assert list(table) == KEYS and table == KEYS and table.to_list() == KEYS
    assert table[2:5] == KEYS[2:5] and isinstance(table[2:5], KeyTable)
    assert table[::2] == KEYS[::2]
    assert table[5:2] == []
    with pytest.raises(IndexError):
        table[len(KEYS)]


def test_growing_a_table_appends_and_round_trips_through_bytes():
    table = KeyTable()
    for lo in range(0, len(KEYS), 2):
        table.extend(KEYS[lo : lo + 2])
    table.extend(KeyTable.of(["z"]))
    assert table == [*KEYS, "z"]
    blob, lengths = table.to_bytes()
    assert KeyTable.from_bytes(blob, lengths) == table
    assert table + ["q"] == [*KEYS, "z", "q"]  # noqa: RUF005 (KeyTable.__add__)


def test_bytes_that_do_not_match_their_lengths_or_are_not_utf8_are_refused():
    with pytest.raises(ValueError, match="add up"):
        KeyTable.from_bytes(b"abc", np.array([1, 1]))
    with pytest.raises(ValueError):
        KeyTable.from_bytes(b"\xff\xfe", np.array([2]))


def test_the_index_finds_every_key_and_nothing_else():
    keys = [f"task-{i}" for i in range(5000)] + KEYS
    table = KeyTable.of(keys)
    index = KeyIndex(table)
    assert len(index) == len(keys)
    assert all(index[k] == i for i, k in enumerate(keys))
    assert index.get("nope") is None and "nope" not in index and "task-7" in index
    found = index.lookup(["task-3", "nope", "日本", "task-4999"])
    np.testing.assert_array_equal(found, [3, -1, keys.index("日本"), 4999])
    assert index == dict(zip(keys, range(len(keys))))
    assert index.duplicates() == []


def test_keys_added_after_the_index_was_built_are_found_and_folded_in():
    table = KeyTable.of([f"k{i}" for i in range(100)])
    index = KeyIndex(table)
    for lo in range(100, 3100, 300):  # past max(1024, n / 8): folded at least once
        new = [f"k{i}" for i in range(lo, lo + 300)]
        table.extend(new)
        index.add(lo, new)
        assert index["k0"] == 0 and index[new[-1]] == lo + 299
    np.testing.assert_array_equal(index.lookup(["k2999", "k150", "k3100"]), [2999, 150, -1])
    assert len(index) == 3100


def test_a_key_held_twice_is_reported():
    index = KeyIndex(KeyTable.of(["a", "b", "a", "c", "b"]))
    assert sorted(index.duplicates()) == ["a", "b"]


def test_tables_join_into_one_of_exactly_their_size():
    parts = [KeyTable.of(KEYS[:3]), KeyTable(), KeyTable.of(KEYS[3:])]
    joined = KeyTable.concat(parts)
    assert joined == KEYS
    blob, lengths = joined.to_bytes()
    assert joined.nbytes == len(blob) + 8 * len(lengths)

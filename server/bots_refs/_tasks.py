"""Task files with prompts (the input of `bots refs measure`) and result files (its output).

A task file is JSONL (one object per line) or CSV (a header row), like the
files `bots pool create` reads, with two more fields: ``prompt`` (required)
and whatever the reward function needs (``answer``, ``tolerance``, ...).
A result file holds only the columns `bots pool create` reads: ``key``,
``weak``, ``strong``, ``prior_alpha``, ``prior_beta``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The format is chosen as `bots pool create` chooses it: one rule, in one place.
from bots_server._files import (
    MAX_KEY_BYTES,
    TASK_COLUMNS,
    FileFormatError,
    read_rows,
    task_from_row,
)

from bots_refs._errors import RefsError, TaskFileError, shorten

POOL_COLUMNS = TASK_COLUMNS[1:]  # weak, strong, prior_alpha, prior_beta
REFERENCE_COLUMNS = ("weak", "strong")
Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class RefTask:
    """One task of a task file.

    Attributes:
        key: The task key, as the pool will know it.
        prompt: Text, or chat messages (``[{"role": ..., "content": ...}]``).
        fields: Keyword arguments for the reward function (``answer`` and any
            other field of the line except ``key``, ``prompt`` and the pool columns).
        columns: Pool columns the line already has (e.g. a known ``weak``);
            they are copied to the result file.
    """

    key: str
    prompt: Prompt
    fields: Mapping[str, Any] = field(default_factory=dict)
    columns: Mapping[str, float] = field(default_factory=dict)


# --- reading -------------------------------------------------------------------


def _rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            try:
                yield from read_rows(path, f, allowed=None)  # prompts and reward fields too
            except FileFormatError as exc:
                raise TaskFileError(exc.path, exc.line, exc.message) from None
    except UnicodeDecodeError as exc:
        raise RefsError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise RefsError(f"cannot read {path}: {exc.strerror or exc}") from None


def _key(path: str, line: int, raw: Any) -> str:
    if raw is None or raw == "":
        raise TaskFileError(path, line, "missing key")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise TaskFileError(path, line, f"key must be a string, got {shorten(raw)}")
    key = str(raw)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise TaskFileError(path, line, f"key is longer than {MAX_KEY_BYTES} UTF-8 bytes")
    return key


def _column(path: str, line: int, key: str, name: str, raw: Any) -> float | None:
    if raw is None:
        return None
    where = f"task {shorten(key)}: {name}"
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise TaskFileError(path, line, f"{where} must be a number, got {shorten(raw)}")
    try:
        value = float(raw)
    except ValueError:
        raise TaskFileError(path, line, f"{where} must be a number, got {shorten(raw)}") from None
    if not math.isfinite(value):
        raise TaskFileError(path, line, f"{where} must be finite, got {shorten(raw)}")
    if name in REFERENCE_COLUMNS and not 0.0 <= value <= 1.0:
        raise TaskFileError(path, line, f"{where} must be in [0, 1], got {value}")
    if name not in REFERENCE_COLUMNS and not value > 0.0:
        raise TaskFileError(path, line, f"{where} must be > 0, got {value}")
    return value


def _prompt(path: str, line: int, key: str, raw: Any) -> Prompt:
    if raw is None or raw == "" or raw == []:
        raise TaskFileError(path, line, f"task {shorten(key)} has no prompt")
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in raw
    ):
        return [dict(m) for m in raw]
    raise TaskFileError(
        path,
        line,
        f"task {shorten(key)}: prompt must be text or a list of "
        '{"role": ..., "content": ...} messages',
    )


def read_task_file(path: str) -> list[RefTask]:
    """Reads a task file with prompts (JSONL or CSV, chosen as `bots pool create` does).

    Raises:
        TaskFileError: For a malformed line, a duplicate key or a task without a
            prompt, with its file and line number.
        RefsError: If the file cannot be read.
    """
    tasks: list[RefTask] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path):
        key = _key(path, line, row.get("key"))
        first = seen.setdefault(key, line)
        if first != line:
            raise TaskFileError(path, line, f"duplicate key {shorten(key)} (first on line {first})")
        prompt = _prompt(path, line, key, row.get("prompt"))
        columns: dict[str, float] = {}
        fields: dict[str, Any] = {}
        for name, raw in row.items():
            if name in ("key", "prompt"):
                continue
            if name in POOL_COLUMNS:
                value = _column(path, line, key, name, raw)
                if value is not None:
                    columns[name] = value
            else:
                fields[name] = raw
        tasks.append(RefTask(key=key, prompt=prompt, fields=fields, columns=columns))
    return tasks


def read_result_file(path: str) -> list[tuple[str, dict[str, float]]]:
    """Reads a result file (or any task file of `bots pool create`): (key, pool columns) per line.

    Unlike `bots pool create`, a line may have ``weak`` without ``strong`` or
    the other way round: that is what one measuring run writes.

    Raises:
        TaskFileError: For a malformed line, an unknown field or a duplicate key.
    """
    out: list[tuple[str, dict[str, float]]] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path):
        key = _key(path, line, row.get("key"))
        unknown = sorted(set(row) - set(TASK_COLUMNS))
        if unknown:
            raise TaskFileError(
                path,
                line,
                f"unknown field(s) {', '.join(map(repr, unknown))} "
                f"(a result file has {', '.join(TASK_COLUMNS)})",
            )
        first = seen.setdefault(key, line)
        if first != line:
            raise TaskFileError(path, line, f"duplicate key {shorten(key)} (first on line {first})")
        values = {name: _column(path, line, key, name, row.get(name)) for name in POOL_COLUMNS}
        out.append((key, {k: v for k, v in values.items() if v is not None}))
    return out


# --- writing -------------------------------------------------------------------


def write_result_file(path: str, rows: Sequence[tuple[str, Mapping[str, float]]]) -> None:
    """Writes ``(key, columns)`` rows as JSONL, or CSV when ``path`` ends in ``.csv``.

    Written beside ``path`` and renamed, so a failed write leaves no half file.

    Raises:
        RefsError: The file cannot be written.
    """
    present = [c for c in POOL_COLUMNS if any(c in cols for _, cols in rows)]
    tmp = f"{path}.part"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if path.lower().endswith(".csv"):
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["key", *present])
                for key, cols in rows:
                    writer.writerow([key, *(_csv_cell(cols.get(c)) for c in present)])
            else:
                for key, cols in rows:
                    obj = {"key": key, **{c: cols[c] for c in present if c in cols}}
                    f.write(json.dumps(obj, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise RefsError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _csv_cell(value: float | None) -> str:
    return "" if value is None else repr(value)


# --- merging -------------------------------------------------------------------


def merge_results(paths: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    """Joins result files by task key: e.g. ``weak`` from one run and ``strong`` from another.

    Keys come in the order of the first file, then new keys of later files in
    theirs. The merged rows are what `bots pool create` accepts.

    Raises:
        RefsError: Two files give one task different values for a column, or a
            task ends up with only one of ``weak`` and ``strong``.
        TaskFileError: A file is malformed.
    """
    merged: dict[str, dict[str, float]] = {}
    origin: dict[tuple[str, str], str] = {}
    for path in paths:
        for key, cols in read_result_file(path):
            row = merged.setdefault(key, {})
            for name, value in cols.items():
                if name in row and row[name] != value:
                    raise RefsError(
                        f"task {shorten(key)}: {name} is {row[name]} in {origin[key, name]} "
                        f"but {value} in {path}"
                    )
                row[name] = value
                origin.setdefault((key, name), path)
    rows = list(merged.items())
    for key, cols in rows:
        has = [c for c in REFERENCE_COLUMNS if c in cols]
        if len(has) == 1:
            missing = "strong" if has == ["weak"] else "weak"
            raise RefsError(
                f"task {shorten(key)} has {has[0]} (from {origin[key, has[0]]}) but no {missing}: "
                "`bots pool create` needs both, so merge a file that has it"
            )
        task_from_row("merged", 0, {"key": key, **cols})  # the same checks as `bots pool create`
    return rows

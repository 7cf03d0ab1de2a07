"""Files the `bots` CLI reads and writes: task lists (JSONL/CSV) and posterior exports (JSONL)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from bots_client import PoolConfig, PoolHeader, Task, TaskPosterior

EXPORT_FORMAT = "bots-posteriors/1"
TASK_COLUMNS = ("key", "weak", "strong", "prior_alpha", "prior_beta")
# JSONL task records may also carry these: the embedding is sent with the task,
# the prompt (what `bots embed` reads) is not.
EMBEDDING_FIELD = "embedding"
TEXT_FIELD = "prompt"
MAX_KEY_BYTES = 512
MAX_EMBEDDING_DIM = 1024


class CliError(Exception):
    """A failure the CLI reports as one line; ``exit_code`` says which kind."""

    exit_code = 1


class UsageError(CliError):
    """Bad arguments or input files."""

    exit_code = 2


class FileFormatError(UsageError):
    """A malformed line of an input file."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


# --- task files ----------------------------------------------------------------


def read_tasks(path: str) -> list[Task]:
    """Reads a task file: JSONL (one object per line) or CSV (with a header row).

    Columns/fields are ``key`` (required), ``weak``, ``strong``,
    ``prior_alpha`` and ``prior_beta``; an empty CSV cell or JSON null means
    unset. JSONL records may also have ``embedding`` (a list of numbers, for
    the similarity estimator: every task has one of one length, or none has)
    and ``prompt`` (ignored), so that the output of `bots embed` is a task
    file. The format comes from the extension (.jsonl/.ndjson/.json or
    .csv), else from the first character (``{`` means JSONL).

    Raises:
        FileFormatError: For a malformed line, with its file and line number.
        UsageError: If the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = read_rows(path, f)
            tasks: list[Task] = []
            seen: dict[str, int] = {}
            dims: dict[int, int] = {}  # embedding length -> first line with it
            for line, row in rows:
                task = task_from_row(path, line, row)
                first = seen.setdefault(task.key, line)
                if first != line:
                    raise FileFormatError(
                        path, line, f"duplicate key {task.key!r} (first on line {first})"
                    )
                dims.setdefault(len(task.embedding), line)
                if len(dims) > 1:
                    (d0, l0), (d1, _) = dims.items()
                    raise FileFormatError(
                        path, line, f"embedding of length {d1}, but line {l0} has length {d0}: "
                        "every task has an embedding of one length, or none has",
                    )  # fmt: skip
                tasks.append(task)
            return tasks
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_rows(
    path: str, f: TextIO, allowed: Sequence[str] | None = TASK_COLUMNS
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL or CSV file, the format chosen as described above.

    ``allowed`` are the CSV columns accepted (None: any); JSONL fields are
    checked by whoever reads the records.

    Raises:
        FileFormatError: For a malformed line, with its file and line number.
    """
    return _jsonl_rows(path, f) if _is_jsonl(path, f) else _csv_rows(path, f, allowed)


def _is_jsonl(path: str, f: TextIO) -> bool:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return True
    if ext == ".csv":
        return False
    head = f.read(4096)
    f.seek(0)
    return head.lstrip().startswith("{")


def _jsonl_rows(path: str, f: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        yield line, _json_object(path, line, text)


def _json_object(path: str, line: int, text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(path, line, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise FileFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _csv_rows(
    path: str, f: TextIO, allowed: Sequence[str] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(f)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [c.strip() for c in header]
        if "key" not in columns:
            raise FileFormatError(path, 1, "the header row has no 'key' column")
        if allowed is not None and EMBEDDING_FIELD in columns:
            raise FileFormatError(
                path, 1, "a CSV task file cannot carry embeddings: use JSONL (bots embed writes it)"
            )
        if allowed is not None:
            _check_fields(path, 1, columns, allowed)
        if len(set(columns)) != len(columns):
            raise FileFormatError(path, 1, "the header row repeats a column")
        end = reader.line_num
        for row in reader:
            # A quoted cell may span lines: a record starts after the last one.
            line, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise FileFormatError(path, line, f"expected {len(columns)} fields, got {len(row)}")
            yield line, {c: (v if v.strip() else None) for c, v in zip(columns, row, strict=True)}
    except csv.Error as exc:
        raise FileFormatError(path, reader.line_num, f"invalid CSV: {exc}") from None


def _check_fields(path: str, line: int, fields: Iterable[str], allowed: Sequence[str]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise FileFormatError(
            path,
            line,
            f"unknown field(s) {', '.join(map(repr, unknown))} (expected {', '.join(allowed)})",
        )


def task_from_row(path: str, line: int, row: dict[str, Any]) -> Task:
    """Validates one task record (from JSONL or CSV) and builds the `Task`.

    Raises:
        FileFormatError: For a missing key, an unknown field or a bad value.
    """
    _check_fields(path, line, row, (*TASK_COLUMNS, EMBEDDING_FIELD, TEXT_FIELD))
    key = _key(path, line, row.get("key"))
    embedding = _embedding(path, line, row.get(EMBEDDING_FIELD))
    values: dict[str, Any] = {
        name: _number(path, line, name, row.get(name)) for name in TASK_COLUMNS[1:]
    }
    for name in ("weak", "strong"):
        v = values[name]
        if v is not None and not 0.0 <= v <= 1.0:
            raise FileFormatError(path, line, f"{name} must be in [0, 1], got {v}")
    if (values["weak"] is None) != (values["strong"] is None):
        raise FileFormatError(path, line, "weak and strong must be given together")
    for name in ("prior_alpha", "prior_beta"):
        v = values[name]
        if v is not None and not v > 0.0:
            raise FileFormatError(path, line, f"{name} must be > 0, got {v}")
    return Task(key=key, embedding=embedding, **values)


def _embedding(path: str, line: int, raw: Any) -> tuple[float, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raise FileFormatError(
            path, line, "embedding must be a JSON list of numbers (CSV files cannot carry one)"
        )
    if not isinstance(raw, list) or not raw:
        raise FileFormatError(path, line, "embedding must be a non-empty list of numbers")
    if len(raw) > MAX_EMBEDDING_DIM:
        raise FileFormatError(
            path, line, f"embedding has {len(raw)} values; at most {MAX_EMBEDDING_DIM} are taken"
        )
    out = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FileFormatError(path, line, f"embedding values must be finite numbers, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _key(path: str, line: int, raw: Any) -> str:
    if raw is None or raw == "":
        raise FileFormatError(path, line, "missing key")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise FileFormatError(path, line, f"key must be a string, got {raw!r}")
    key = str(raw)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise FileFormatError(path, line, f"key is longer than {MAX_KEY_BYTES} UTF-8 bytes")
    return key


def _number(path: str, line: int, name: str, raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise FileFormatError(path, line, f"{name} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise FileFormatError(path, line, f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise FileFormatError(path, line, f"{name} must be finite, got {raw!r}")
    return value


# --- export files --------------------------------------------------------------


def none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def header_to_json(header: PoolHeader) -> dict[str, Any]:
    """The first line of an export file."""
    return {
        "format": EXPORT_FORMAT,
        "name": header.name,
        "config": header.config.to_dict(),
        "task_count": header.task_count,
        "steps_applied": header.steps_applied,
        "capability": none_if_nan(header.capability),
        "selections_opened": header.selections_opened,
    }


def posterior_to_json(p: TaskPosterior) -> dict[str, Any]:
    """One task line of an export file."""
    t = p.task
    return {
        "key": t.key,
        "weak": t.weak,
        "strong": t.strong,
        "prior_alpha": t.prior_alpha,
        "prior_beta": t.prior_beta,
        "alpha": p.alpha,
        "beta": p.beta,
        **({EMBEDDING_FIELD: list(t.embedding)} if t.embedding else {}),
    }


_HEADER_FIELDS = (
    "format",
    "name",
    "config",
    "task_count",
    "steps_applied",
    "capability",
    "selections_opened",
)


def header_from_json(path: str, line: int, obj: dict[str, Any]) -> PoolHeader:
    """Validates an export file's header line.

    Raises:
        FileFormatError: For a missing, unknown or malformed field.
    """
    _check_fields(path, line, obj, _HEADER_FIELDS)
    fmt = obj.get("format", EXPORT_FORMAT)
    if fmt != EXPORT_FORMAT:
        raise FileFormatError(path, line, f"unsupported format {fmt!r} (expected {EXPORT_FORMAT})")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise FileFormatError(path, line, "the header needs a pool 'name'")
    config = obj.get("config", {})
    if not isinstance(config, dict):
        raise FileFormatError(path, line, "config must be an object")
    try:
        pool_config = PoolConfig.from_dict(config)
    except ValueError as exc:
        raise FileFormatError(path, line, str(exc)) from None
    counts = {}
    for field in ("task_count", "steps_applied", "selections_opened"):
        v = obj.get(field, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise FileFormatError(path, line, f"{field} must be an integer >= 0, got {v!r}")
        counts[field] = v
    capability = _number(path, line, "capability", obj.get("capability"))
    return PoolHeader(
        name=name,
        config=pool_config,
        capability=math.nan if capability is None else capability,
        **counts,
    )


def read_export(path: str, f: TextIO) -> tuple[PoolHeader, Iterator[TaskPosterior]]:
    """Reads an export file: the header now, the posteriors lazily.

    Raises:
        FileFormatError: For a malformed line (possibly while iterating).
    """
    lines = enumerate(f, 1)
    for line, text in lines:
        if text.strip():
            header = header_from_json(path, line, _json_object(path, line, text))
            break
    else:
        raise FileFormatError(path, 1, "empty file: expected a header line")

    def posteriors() -> Iterator[TaskPosterior]:
        for line, text in lines:
            if not text.strip():
                continue
            obj = _json_object(path, line, text)
            _check_fields(path, line, obj, (*TASK_COLUMNS, EMBEDDING_FIELD, "alpha", "beta"))
            alpha = _number(path, line, "alpha", obj.pop("alpha", None))
            beta = _number(path, line, "beta", obj.pop("beta", None))
            if alpha is None or beta is None or alpha <= 0 or beta <= 0:
                raise FileFormatError(path, line, "alpha and beta must be numbers > 0")
            yield TaskPosterior(task=task_from_row(path, line, obj), alpha=alpha, beta=beta)

    return header, posteriors()

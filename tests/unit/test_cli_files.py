"""Task and export files of the `bots` CLI, read without a server."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from bots_client import PoolConfig, PoolHeader, SelectionMode, Task, TaskPosterior
from bots_server import _cli, _files
from bots_server._files import FileFormatError, UsageError, read_tasks
from bots_server._progress import Progress


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- JSONL --------------------------------------------------------------------------


def test_jsonl_reads_keys_and_optional_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tasks.jsonl",
        '{"key": "a"}\n'
        "\n"
        '{"key": "b", "weak": 0.2, "strong": 0.6, "prior_alpha": 2, "prior_beta": null}\n'
        '{"key": 17}\n',
    )
    assert read_tasks(path) == [
        Task("a"),
        Task("b", weak=0.2, strong=0.6, prior_alpha=2.0),
        Task("17"),
    ]


def test_jsonl_is_detected_by_content_without_extension(tmp_path: Path) -> None:
    path = _write(tmp_path, "tasks", '  {"key": "a"}\n')
    assert read_tasks(path) == [Task("a")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('{"key": "a"}\n{"key": "b",\n', 2, "invalid JSON"),
        ('{"key": "a"}\n\n["b"]\n', 3, "expected a JSON object"),
        ('{"weak": 0.1, "strong": 0.2}\n', 1, "missing key"),
        ('{"key": ""}\n', 1, "missing key"),
        ('{"key": true}\n', 1, "key must be a string"),
        ('{"key": "a", "wek": 0.1}\n', 1, "unknown field(s) 'wek'"),
        ('{"key": "a", "weak": 0.1}\n', 1, "weak and strong must be given together"),
        ('{"key": "a", "weak": 1.5, "strong": 0.2}\n', 1, "weak must be in [0, 1]"),
        ('{"key": "a", "weak": "x", "strong": 0.2}\n', 1, "weak must be a number"),
        ('{"key": "a", "prior_alpha": NaN}\n', 1, "prior_alpha must be finite"),
        ('{"key": "a", "prior_beta": 0}\n', 1, "prior_beta must be > 0"),
        ('{"key": "a"}\n{"key": "b"}\n{"key": "a"}\n', 3, "duplicate key 'a' (first on line 1)"),
        ('{"key": "' + "k" * 513 + '"}\n', 1, "longer than 512"),
    ],
)
def test_jsonl_errors_name_the_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path, "bad.jsonl", text)
    with pytest.raises(FileFormatError) as info:
        read_tasks(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)
    assert info.value.exit_code == 2


# --- CSV ----------------------------------------------------------------------------


def test_csv_reads_header_columns_in_any_order_and_empty_cells_are_unset(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path,
        "tasks.csv",
        "strong,key,weak\n0.6,a,0.2\n,b,\n\n1,c,0\n",
    )
    assert read_tasks(path) == [
        Task("a", weak=0.2, strong=0.6),
        Task("b"),
        Task("c", weak=0.0, strong=1.0),
    ]


def test_csv_with_a_byte_order_mark_and_only_keys(tmp_path: Path) -> None:
    path = tmp_path / "tasks.csv"
    path.write_bytes("\ufeffkey\nx\ny\n".encode())
    assert read_tasks(str(path)) == [Task("x"), Task("y")]


def test_csv_line_numbers_count_quoted_multiline_cells(tmp_path: Path) -> None:
    path = _write(tmp_path, "tasks.csv", 'key,weak,strong\n"multi\nline",0.1,0.2\nbad,2,0.5\n')
    with pytest.raises(FileFormatError, match=r"tasks\.csv:4: weak must be in \[0, 1\]"):
        read_tasks(path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("weak,strong\n0.1,0.2\n", 1, "no 'key' column"),
        ("key,difficulty\na,3\n", 1, "unknown field(s) 'difficulty'"),
        ("key,key\na,b\n", 1, "repeats a column"),
        ("key,weak,strong\na,0.1\n", 2, "expected 3 fields, got 2"),
        ("key,prior_alpha\na,-1\n", 2, "prior_alpha must be > 0"),
        ("key,weak,strong\na,0.1,0.2\nb,inf,0.2\n", 3, "weak must be finite"),
        ("key\na\nb\na\n", 4, "duplicate key 'a' (first on line 2)"),
    ],
)
def test_csv_errors_name_the_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path, "bad.csv", text)
    with pytest.raises(FileFormatError) as info:
        read_tasks(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)


def test_empty_files_hold_no_tasks(tmp_path: Path) -> None:
    assert read_tasks(_write(tmp_path, "empty.csv", "")) == []
    assert read_tasks(_write(tmp_path, "empty.jsonl", "\n\n")) == []


def test_unreadable_files_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_tasks(str(tmp_path / "missing.csv"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"key\n\xff\xfe\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_tasks(str(binary))


# --- export files -----------------------------------------------------------------------


def test_export_header_round_trips_with_nan_capability_as_null() -> None:
    header = PoolHeader(
        "p", PoolConfig(forgetting=0.2, mode=SelectionMode.SOFTMAX, seed=3), 2, 5, math.nan, 7
    )
    obj = json.loads(json.dumps(_files.header_to_json(header), allow_nan=False))
    assert obj["capability"] is None and obj["config"]["mode"] == "softmax"
    back = _files.header_from_json("f", 1, obj)
    assert math.isnan(back.capability)
    assert back.config == header.config
    assert (back.name, back.task_count, back.steps_applied, back.selections_opened) == (
        "p",
        2,
        5,
        7,
    )


def test_export_file_reads_header_then_posteriors_lazily() -> None:
    header = PoolHeader("p", PoolConfig(), 2, 0, 0.5, 0)
    posterior = TaskPosterior(Task("a", weak=0.1, strong=0.3), 2.0, 3.0)
    text = (
        json.dumps(_files.header_to_json(header))
        + "\n"
        + json.dumps(_files.posterior_to_json(posterior))
        + "\n"
        + '{"key": "b", "alpha": -1, "beta": 2}\n'
    )
    got_header, items = _files.read_export("x.jsonl", io.StringIO(text))
    assert got_header == header
    assert next(items) == posterior
    with pytest.raises(FileFormatError, match=r"x\.jsonl:3: alpha and beta"):
        next(items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ('{"format": "other/9", "name": "p"}\n', "unsupported format"),
        ('{"config": {}}\n', "pool 'name'"),
        ('{"name": "p", "config": {"mode": "best"}}\n', "mode"),
        ('{"name": "p", "task_count": -1}\n', "task_count must be an integer"),
        ('{"name": "p", "extra": 1}\n', "unknown field(s) 'extra'"),
    ],
)
def test_bad_export_headers_are_rejected(text: str, message: str) -> None:
    with pytest.raises(FileFormatError) as info:
        _files.read_export("x.jsonl", io.StringIO(text))
    assert message in str(info.value)


# --- CLI entry point without a server ------------------------------------------------------


def test_bad_task_file_exits_2_with_file_and_line_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "bad.jsonl", '{"key": "a"}\n{"key": "b", "weak": 2, "strong": 1}\n')
    # Port 1 is never served: had the CLI connected first, it would exit 1.
    code = _cli.main(["--target", "127.0.0.1:1", "pool", "create", "p", "--tasks", path])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: {path}:2: weak must be in [0, 1], got 2.0\n"


def test_bad_config_override_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli.main(["pool", "create", "p", "--config", "forgetting"])
    assert code == 2
    assert "--config expects key=value" in capsys.readouterr().err
    code = _cli.main(["pool", "create", "p", "--config", "speed=3"])
    assert code == 2
    assert "unknown config field 'speed'" in capsys.readouterr().err


def test_config_overrides_parse_into_a_pool_config() -> None:
    config = _cli._parse_config(["forgetting=0.2", "mode=uniform", "pseudo-rollouts=8"])
    assert config == PoolConfig(forgetting=0.2, mode=SelectionMode.UNIFORM, pseudo_rollouts=8.0)


def test_serve_has_one_flag_per_setting() -> None:
    parser = _cli.build_parser()
    args = parser.parse_args(["serve", "--port", "0", "--no-fsync", "--grace-seconds", "2.5"])
    assert (args.serve_port, args.serve_fsync, args.serve_grace_seconds) == (0, False, 2.5)
    assert args.serve_host is None and args.serve_log_level is None
    for field in _cli._settings_fields():
        assert hasattr(args, f"serve_{field.name}")


def test_client_options_work_before_and_after_the_subcommand() -> None:
    parser = _cli.build_parser()
    before = parser.parse_args(["--target", "h:1", "pool", "list"])
    after = parser.parse_args(["pool", "list", "--target", "h:2", "--timeout", "3"])
    assert before.target == "h:1"
    assert (after.target, after.timeout) == ("h:2", 3.0)


# --- progress bar ---------------------------------------------------------------------------


def test_progress_bar_draws_only_when_enabled() -> None:
    out = io.StringIO()
    with Progress("adding", 200, stream=out, enabled=True) as bar:
        bar.update(50)
        assert "25.0%" in bar.render()
        assert "50/200 tasks" in bar.render()
    assert out.getvalue().endswith("\n") and "\r" in out.getvalue()

    quiet = io.StringIO()  # not a terminal: off unless forced
    with Progress("adding", 10, stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_progress_without_total_shows_counts() -> None:
    bar = Progress("exporting", None, stream=io.StringIO(), enabled=False)
    bar.update(1234)
    assert bar.render().startswith("exporting 1234 tasks")

"""The `bots` CLI (run as `python -m bots_server`) against a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bots_client import SelectorClient


def bots(
    *args: str, target: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Runs the CLI in a fresh interpreter and returns the finished process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    if target is not None:
        env["BOTS_TARGET"] = target
    return subprocess.run(
        [sys.executable, "-m", "bots_server", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_create_show_export_import_round_trip(target: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.csv"
    rows = ["key,weak,strong,prior_alpha,prior_beta"]
    rows += [f"task-{i},{i / 100},{i / 100 + 0.2},," for i in range(30)]
    rows += ["no-refs,,,2,3"]
    tasks.write_text("\n".join(rows) + "\n", encoding="utf-8")

    created = bots(
        "pool", "create", "math", "--tasks", str(tasks), "--config", "forgetting=0.2", "seed=9",
        "--chunk-size", "7", "--progress", target=target,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "31 new tasks added, 31 tasks in total" in created.stdout
    assert "100.0%" in created.stderr  # --progress draws even off a terminal

    again = bots("pool", "create", "math", "--tasks", str(tasks), "--config", "forgetting=0.2",
                 "seed=9", target=target)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "0 new tasks added, 31 tasks in total" in again.stdout

    shown = bots("pool", "show", "math", "--json", target=target)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["task_count"] == 31 and info["tasks_with_references"] == 30
    assert info["config"]["forgetting"] == 0.2 and info["config"]["seed"] == 9
    assert info["capability"] is None  # NaN before any step

    human = bots("pool", "show", "math", target=target)
    assert human.returncode == 0 and "31 (30 with reference rates)" in human.stdout

    # One step, so that the export carries learned posteriors.
    with SelectorClient(target) as client:
        sel = client.select_batch("math", 4)
        client.report_outcomes(
            "math", {k: (3, 4) for k in sel.keys}, selection_id=sel.selection_id, final=True
        )

    out = tmp_path / "math.jsonl"
    exported = bots("pool", "export", "math", "--out", str(out), "--chunk-size", "10",
                    target=target)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header, posteriors = lines[0], lines[1:]
    assert header["name"] == "math" and header["task_count"] == 31
    assert header["steps_applied"] == 1
    assert len(posteriors) == 31
    assert set(posteriors[0]) == {
        "key", "weak", "strong", "prior_alpha", "prior_beta", "alpha", "beta",
    }  # fmt: skip
    assert posteriors[-1]["key"] == "no-refs" and posteriors[-1]["prior_alpha"] == 2
    assert not (tmp_path / "math.jsonl.part").exists()

    imported = bots("pool", "import", str(out), "--name", "math-copy", target=target)
    assert imported.returncode == 0, imported.stderr
    assert "imported pool 'math-copy': 31 tasks" in imported.stdout

    listed = bots("pool", "list", "--json", target=target)
    assert listed.returncode == 0, listed.stderr
    pools = {p["name"]: p for p in json.loads(listed.stdout)}
    assert set(pools) == {"math", "math-copy"}
    assert pools["math-copy"]["steps_applied"] == 1
    assert pools["math-copy"]["config"] == pools["math"]["config"]

    again_out = tmp_path / "copy.jsonl"
    assert (
        bots("pool", "export", "math-copy", "--out", str(again_out), target=target).returncode == 0
    )
    copy_lines = [json.loads(line) for line in again_out.read_text().splitlines()]
    assert copy_lines[1:] == posteriors

    table = bots("pool", "list", target=target)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[0] == "NAME"

    deleted = bots("pool", "delete", "math", target=target)
    assert deleted.returncode == 0 and "deleted pool 'math'" in deleted.stdout
    missing = bots("pool", "show", "math", target=target)
    assert missing.returncode == 1
    assert missing.stderr == "error: pool 'math' not found; did you mean 'math-copy'?\n"


def test_create_with_a_conflicting_config_is_a_one_line_error(target: str) -> None:
    assert bots("pool", "create", "p", target=target).returncode == 0
    result = bots("pool", "create", "p", "--config", "forgetting=0.9", target=target)
    assert result.returncode == 1
    assert result.stderr == "error: pool 'p' already exists with a different config\n"


def test_import_of_a_broken_file_creates_nothing(target: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"name": "p", "config": {}, "task_count": 2}\n'
        '{"key": "a", "alpha": 1, "beta": 1}\n'
        '{"key": "b", "alpha": 0, "beta": 1}\n',
        encoding="utf-8",
    )
    result = bots("pool", "import", str(bad), target=target)
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}:3: alpha and beta must be numbers > 0\n"
    assert bots("pool", "show", "p", target=target).returncode == 1


def test_check_reports_serving(target: str) -> None:
    result = bots("check", "--target", target, "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


@pytest.mark.parametrize(
    "args",
    [("pool", "list"), ("pool", "show", "x"), ("check",)],
    ids=["list", "show", "check"],
)
def test_unreachable_server_is_one_line_without_traceback(
    refused_target: str, args: tuple[str, ...]
) -> None:
    result = bots("--target", refused_target, "--timeout", "3", *args)
    assert result.returncode == 1
    assert result.stderr == f"error: server {refused_target} is unreachable (UNAVAILABLE)\n"
    assert "Traceback" not in result.stdout + result.stderr


def test_hung_server_reports_the_deadline(silent_target: str) -> None:
    result = bots("pool", "list", "--timeout", "0.5", target=silent_target)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: server {silent_target} did not answer within 0.5s (DEADLINE_EXCEEDED)\n"
    )


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    env["BOTS_GRACE_SECONDS"] = "1"  # from the environment; flags below win over it
    env["BOTS_METRICS_PORT"] = "0"  # 9464 may be taken by a `bots serve` outside the tests
    proc = subprocess.Popen(
        [sys.executable, "-m", "bots_server", "serve", "--port", "0",
         "--data-dir", str(tmp_path / "data"), "--no-fsync", "--log-level", "info"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        address = None
        for line in proc.stderr:
            match = re.search(r"serving \S+ on (\S+)", line)
            if match:
                address = match.group(1)
                break
        assert address is not None, "the server never said where it listens"
        assert bots("check", "--target", address).stdout.strip() == "SERVING"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_serve_rejects_a_bad_environment_value() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    env["BOTS_PORT"] = "many"
    result = subprocess.run(
        [sys.executable, "-m", "bots_server", "serve"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "error: BOTS_PORT='many' is not a valid int\n"


# --- hints: errors that say what to do next ----------------------------------------


def test_an_unknown_pool_suggests_the_closest_names(target: str, tmp_path: Path) -> None:
    with SelectorClient(target) as client:
        client.create_pool("math-easy", ["a"])
        client.create_pool("math-hard", ["a"])
        client.create_pool("poetry", ["a"])
    result = bots("pool", "show", "math-esy", target=target)
    assert result.returncode == 1
    assert result.stderr == "error: pool 'math-esy' not found; did you mean 'math-easy'?\n"
    two = bots("pool", "show", "math-eazy", target=target)
    assert two.stderr == (
        "error: pool 'math-eazy' not found; did you mean 'math-easy' or 'math-hard'?\n"
    )
    far = bots("pool", "delete", "zzz", target=target)
    assert far.stderr == "error: pool 'zzz' not found; `bots pool list` shows the pools\n"


def test_an_unknown_pool_on_an_empty_server_says_so(target: str) -> None:
    result = bots("pool", "show", "quickstart", target=target)
    assert result.stderr == "error: pool 'quickstart' not found; the server has no pools\n"


def test_importing_over_an_existing_pool_names_the_name_option(target: str, tmp_path: Path) -> None:
    with SelectorClient(target) as client:
        client.create_pool("math", ["q1", "q2"])
    out = tmp_path / "math.jsonl"
    assert bots("pool", "export", "math", "--out", str(out), target=target).returncode == 0
    result = bots("pool", "import", str(out), target=target)
    assert result.returncode == 1
    assert result.stderr == (
        "error: pool 'math' already exists; import it under another name with --name NEW_NAME\n"
    )
    renamed = bots("pool", "import", str(out), "--name", "math-2", target=target)
    assert renamed.stdout == "imported pool 'math-2': 2 tasks\n"


def test_counts_of_one_are_singular(target: str, tmp_path: Path) -> None:
    tasks = tmp_path / "one.jsonl"
    tasks.write_text('{"key": "only"}\n', encoding="utf-8")
    created = bots("pool", "create", "solo", "--tasks", str(tasks), target=target)
    assert created.stdout == "pool 'solo': 1 new task added, 1 task in total\n"
    out = tmp_path / "solo.jsonl"
    exported = bots("pool", "export", "solo", "--out", str(out), target=target)
    assert exported.stdout == f"exported pool 'solo': 1 task to {out}\n"


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("localhost", "--target 'localhost' has no port: expected host:port, e.g. localhost:50051"),
        ("[::1]", "--target '[::1]' has no port: expected host:port, e.g. [::1]:50051"),
        ("http://10.0.0.5:50051", "--target expects host:port, not a URL: use --target 10.0.0.5:50051"),
        (
            "https://bots.example:443/",
            "--target expects host:port, not a URL: use --target bots.example:443 "
            "(and --ca-file for TLS)",
        ),
    ],
)  # fmt: skip
def test_a_target_without_port_or_with_a_url_scheme_says_what_is_expected(
    given: str, hint: str
) -> None:
    for command in (["pool", "list"], ["check"]):
        result = bots(*command, "--target", given)
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"error: {hint}\n"


def test_grpc_target_schemes_are_left_to_grpc(target: str) -> None:
    result = bots("check", "--target", f"ipv4:{target}")
    assert result.stdout.strip() == "SERVING"


def test_a_missing_token_names_the_option_and_the_variable(tmp_path: Path) -> None:
    from bots_server._app import start_server
    from bots_server._settings import ServerSettings

    token = "t" * 32
    server = start_server(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=str(tmp_path / "d"),
                       auth_token=token)
    )  # fmt: skip
    try:
        missing = bots("pool", "list", target=server.address)
        assert missing.returncode == 1
        assert missing.stderr.startswith("error: missing bearer token")
        assert missing.stderr.endswith(
            "; this server wants a token: pass --token TOKEN or set BOTS_TOKEN\n"
        )
        wrong = bots("pool", "list", "--token", "w" * 32, target=server.address)
        assert wrong.stderr == "error: invalid token: the server does not accept this token\n"
        ok = bots("pool", "list", "--token", token, target=server.address)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.stop(grace=0)

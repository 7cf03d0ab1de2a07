"""Auth and logging edges: a deleted token file fails closed, Redis passwords are masked
in every URL form, a cancelled import logs no error, and refused calls cannot flood
the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_client import AuthError, SelectorClient
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings, redact_url
from service_procs import RedisProcess, free_port

TOKEN = "write-0123456789abcdef-SECRET"
SECRET = "hunter2-0123456789-SECRET"
LOG_INTERVAL = 2.0


def _settings(tmp_path: Path, **overrides: object) -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        fsync=False,
        metrics_port=-1,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    """A server with token auth (one write token, in ``tmp_path / "tokens"``)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} write\n")
    server = start_server(
        _settings(tmp_path, auth_tokens_file=str(tokens), refusal_log_seconds=LOG_INTERVAL)
    )
    yield server
    server.stop(grace=0)


def _until(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.1)


# ------------------------------------------------------ (a) token file deleted


def test_deleting_the_token_file_revokes_its_tokens_loudly(
    running: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bots_server")
    tokens = tmp_path / "tokens"
    with SelectorClient(running.address, token=TOKEN, timeout=5, retries=0) as client:
        assert client.list_pools() == []
        tokens.unlink()

        def refused() -> bool:
            try:
                client.list_pools()
            except AuthError as err:
                assert err.code == grpc.StatusCode.UNAUTHENTICATED
                return True
            return False

        _until(refused)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(tokens) in errors[0].getMessage()
        assert "revoked" in errors[0].getMessage()
        time.sleep(1.2)  # more checks while the file is gone log nothing new
        with pytest.raises(AuthError):
            client.list_pools()
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

        tokens.write_text(f"{TOKEN} write\n")  # back: the token works again
        _until(lambda: not refused())
    assert TOKEN not in caplog.text


# --------------------------------------------------- (b) passwords in URLs


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:SECRET@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://:SECRET@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://SECRET@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://user:SECRET@h:6380", "rediss://user:***@h:6380"),
        ("rediss://SECRET@h", "rediss://***@h"),
        ("redis://user:p@ss:SECRET@h/0", "redis://user:***@h/0"),
        ("redis://:SECRET@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://h:6379/0?password=SECRET&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://h/0?Password=SECRET", "redis://h/0?Password=***"),
        ("unix:///run/redis.sock?password=SECRET", "unix:///run/redis.sock?password=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("", ""),
    ],
)
def test_redact_url_masks_every_password_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


def test_a_password_only_redis_url_never_reaches_the_process_log(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    env["PYTHONUNBUFFERED"] = "1"
    url = f"redis://{SECRET}@127.0.0.1:{redis.port}/0"  # password without user
    cmd = [sys.executable, "-m", "bots_server", "serve", "--port", str(port),
           "--metrics-port", "-1", "--redis-url", url, "--log-level", "debug"]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # Redis has no such user, so the server keeps retrying; it still starts.
        _until(lambda: "serving bots.v1.TaskSelector" in log_path.read_text(), 30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        redis.stop()
    logged = log_path.read_text()
    assert f"redis://***@127.0.0.1:{redis.port}/0" in logged
    assert SECRET not in logged and "SECRET" not in logged


# ------------------------------------------------ (c) cancelled import is quiet


def test_a_cancelled_import_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server(_settings(tmp_path))
    release = threading.Event()

    def requests() -> Iterator[pb.PosteriorChunk]:
        chunk = pb.PosteriorChunk()
        chunk.header.name = "cancelled"
        chunk.header.task_count = 2
        chunk.tasks.add(task=pb.Task(key="a"), alpha=1.0, beta=1.0)
        yield chunk
        release.wait(timeout=30)

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = selector_pb2_grpc.TaskSelectorStub(channel)
            future = stub.ImportPosteriors.future(requests(), timeout=30)
            time.sleep(0.5)  # the server is inside the import, waiting for more
            assert server.guards[0].in_use == 1
            future.cancel()
            _until(lambda: server.guards[0].in_use == 0)  # the server-side call has ended
            release.set()
            time.sleep(0.3)  # anything gRPC would log after the handler returned
            assert list(stub.ListPools(pb.ListPoolsRequest(), timeout=5).pools) == []
    finally:
        release.set()
        server.stop(grace=0)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]


# ----------------------------------------------- (d) refusals are rate-limited


def test_refused_calls_log_one_warning_per_address_and_reason_per_interval(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bots_server")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "refused a call" in r.getMessage()
        ]

    def refuse(token: str | None = None) -> None:
        # A new client, so a new connection and source port, each time.
        with (
            SelectorClient(running.address, token=token, timeout=5, retries=0) as client,
            pytest.raises(AuthError),
        ):
            client.list_pools()

    start = time.monotonic()
    for _ in range(30):
        refuse()
    refuse("wrong-0123456789abcdef")
    if time.monotonic() - start > LOG_INTERVAL * 0.9:
        pytest.skip(f"31 refused calls took longer than the {LOG_INTERVAL} s log interval here")
    assert len(warnings()) == 2  # one per reason: missing token, invalid token
    assert "missing bearer token" in warnings()[0] and "invalid token" in warnings()[1]

    time.sleep(LOG_INTERVAL + 0.1)  # the interval has passed: the next one is logged, with a count
    refuse()
    assert len(warnings()) == 3
    assert "29 similar refusals from this address" in warnings()[2]

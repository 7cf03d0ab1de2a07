"""TLS, mutual TLS and bearer tokens against real servers, with certificates made here.

Also: tokens and Redis passwords never reach logs or /metrics.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_client import AuthError, SelectorClient, Task, UnavailableError
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_procs import RedisProcess, free_port

WRITE_TOKEN = "write-0123456789abcdef-SECRET"
READ_TOKEN = "read-0123456789abcdef-SECRET"
ENV_TOKEN = "env-0123456789abcdef-SECRET"
REDIS_PASSWORD = "redis-pw-0123456789-SECRET"


# ------------------------------------------------------------- certificates


@dataclass
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    rogue_cert: bytes  # a client certificate from another CA
    rogue_key: bytes
    other_ca: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key, other_key = _key(), _key()
    ca = _cert("bots test CA", ca_key, None, ca=True)
    other = _cert("some other CA", other_key, None, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    return Pki(
        ca=_pem(ca),
        server_cert=_pem(_cert("localhost", server_key, (ca.subject, ca_key), server=True)),
        server_key=_pem_key(server_key),
        client_cert=_pem(_cert("trainer", client_key, (ca.subject, ca_key))),
        client_key=_pem_key(client_key),
        rogue_cert=_pem(_cert("trainer", rogue_key, (other.subject, other_key))),
        rogue_key=_pem_key(rogue_key),
        other_ca=_pem(other),
    )


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(**overrides: Any) -> RunningServer:
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(tmp_path / f"data{len(started)}"),
            "fsync": False,
            "metrics_port": 0,
        }
        running = start_server(ServerSettings(**{**base, **overrides}))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(grace=0)


def tls_files(tmp_path: Path, pki: Pki, *, mutual: bool = False) -> dict[str, str]:
    files = {
        "tls_cert_file": write(tmp_path / "server.pem", pki.server_cert),
        "tls_key_file": write(tmp_path / "server.key", pki.server_key),
    }
    if mutual:
        files["tls_client_ca_file"] = write(tmp_path / "ca.pem", pki.ca)
    return files


def tokens_file(tmp_path: Path) -> str:
    return write(tmp_path / "tokens", f"# test tokens\n{WRITE_TOKEN} write\n{READ_TOKEN} read\n")


def localhost(running: RunningServer) -> str:
    return f"localhost:{running.port}"


# ------------------------------------------------------------------ TLS


def test_tls_serves_clients_that_trust_the_ca(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki))
    with SelectorClient(localhost(running), root_certificates=pki.ca, timeout=5) as client:
        assert client.create_pool("p", ["a", "b"]).task_count == 2


def test_tls_refuses_plaintext_and_untrusting_clients(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki))
    with (
        SelectorClient(localhost(running), timeout=2, retries=0) as plain,
        pytest.raises(UnavailableError),
    ):
        plain.list_pools()
    with (
        SelectorClient(
            localhost(running), root_certificates=pki.other_ca, timeout=2, retries=0
        ) as wrong_ca,
        pytest.raises(UnavailableError),
    ):
        wrong_ca.list_pools()


def mtls_channel(target: str, pki: Pki, cert: bytes | None, key: bytes | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(target, creds)


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki, mutual=True))
    target = localhost(running)
    with mtls_channel(target, pki, pki.client_cert, pki.client_key) as channel:
        client = SelectorClient(target, channel=channel, timeout=5)
        assert client.create_pool("p", ["a"]).task_count == 1
    for cert, key in ((None, None), (pki.rogue_cert, pki.rogue_key)):
        with mtls_channel(target, pki, cert, key) as channel:
            client = SelectorClient(target, channel=channel, timeout=2, retries=0)
            with pytest.raises(UnavailableError):
                client.list_pools()


def test_tls_health_port_serves_plaintext_health_only(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki, mutual=True), health_port=0)
    assert running.health_port is not None
    target = f"127.0.0.1:{running.health_port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "bots.v1.TaskSelector", "liveness"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = selector_pb2_grpc.TaskSelectorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListPools(pb.ListPoolsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_bots_check_works_against_the_health_port(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki), health_port=0)
    result = subprocess.run(
        [sys.executable, "-m", "bots_server", "check", "--target",
         f"127.0.0.1:{running.health_port}", "--timeout", "5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"tls_cert_file": "/nonexistent/cert.pem", "tls_key_file": "/nonexistent/k"},
            "cannot read",
        ),
        ({"tls_cert_file": "CERT"}, "both tls_cert_file and tls_key_file"),
        ({"tls_client_ca_file": "CERT"}, "both tls_cert_file and tls_key_file"),
    ],
)
def test_unusable_tls_settings_stop_the_start_with_a_clear_error(
    make_server: Callable[..., RunningServer],
    tmp_path: Path,
    pki: Pki,
    files: dict[str, str],
    message: str,
) -> None:
    cert = write(tmp_path / "c.pem", pki.server_cert)
    with pytest.raises(RuntimeError, match=message):
        make_server(**{k: cert if v == "CERT" else v for k, v in files.items()})


# ---------------------------------------------------------------- tokens


def expect_code(code: grpc.StatusCode, call: Callable[[], Any], match: str = "") -> None:
    with pytest.raises(AuthError) as info:
        call()
    assert info.value.code == code, info.value
    assert match in info.value.details


def test_calls_without_a_valid_token_are_unauthenticated(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    running = make_server(auth_tokens_file=tokens_file(tmp_path))
    with SelectorClient(running.address, timeout=5) as anonymous:
        expect_code(grpc.StatusCode.UNAUTHENTICATED, anonymous.list_pools, "missing bearer token")
    with SelectorClient(running.address, token="not-a-known-token-at-all", timeout=5) as wrong:
        expect_code(grpc.StatusCode.UNAUTHENTICATED, wrong.list_pools, "invalid token")
        expect_code(grpc.StatusCode.UNAUTHENTICATED, lambda: wrong.create_pool("p", ["a"]))
    with SelectorClient(running.address, token=WRITE_TOKEN, timeout=5) as writer:
        assert writer.list_pools() == []


def test_read_tokens_read_and_select_but_do_not_write(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    running = make_server(auth_tokens_file=tokens_file(tmp_path))
    writer = SelectorClient(running.address, token=WRITE_TOKEN, timeout=5)
    reader = SelectorClient(running.address, token=READ_TOKEN, timeout=5)
    with writer, reader:
        writer.create_pool("p", [Task("a", 0.1, 0.9), Task("b", 0.2, 0.8), Task("c")])
        sel = reader.select_batch("p", 2, run_id="r", step=0)
        assert reader.get_pool("p").open_selections == 1
        assert [p.name for p in reader.list_pools()] == ["p"]
        chunks = list(reader.export_posteriors("p"))
        assert sum(len(posteriors) for _, posteriors in chunks) == 3

        denied = grpc.StatusCode.PERMISSION_DENIED
        report = {k: (1, 2) for k in sel.keys}
        expect_code(denied, lambda: reader.report_outcomes("p", report, selection_id=sel.selection_id), "ReportOutcomes needs a write token")  # fmt: skip
        expect_code(denied, lambda: reader.create_pool("q", ["x"]), "read-only")
        expect_code(denied, lambda: reader.add_tasks("p", ["d"]), "read-only")
        expect_code(denied, lambda: reader.delete_pool("p"), "read-only")
        expect_code(denied, lambda: reader.import_posteriors(iter(chunks)), "read-only")

        ack = writer.report_outcomes("p", report, selection_id=sel.selection_id, final=True)
        assert ack.steps_applied == 1
        writer.delete_pool("p")


def test_health_needs_no_token_and_reflection_needs_one(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    running = make_server(auth_tokens_file=tokens_file(tmp_path))
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(refl.ServerReflectionInfo(iter([request]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(
            refl.ServerReflectionInfo(
                iter([request]), timeout=5, metadata=(("authorization", f"Bearer {READ_TOKEN}"),)
            )
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert "bots.v1.TaskSelector" in names


def test_tokens_over_tls_and_the_env_token(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki), auth_token=ENV_TOKEN)
    target = localhost(running)
    with SelectorClient(target, token=ENV_TOKEN, root_certificates=pki.ca, timeout=5) as c:
        assert c.create_pool("p", ["a"]).task_count == 1
    with SelectorClient(target, root_certificates=pki.ca, timeout=5) as anonymous:
        expect_code(grpc.StatusCode.UNAUTHENTICATED, anonymous.list_pools)


def test_the_token_file_is_reloaded_when_it_changes(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    path = tokens_file(tmp_path)
    running = make_server(auth_tokens_file=path)
    rotated = "rotated-0123456789abcdef-SECRET"
    write(Path(path), f"{rotated} write\n")
    with SelectorClient(running.address, token=rotated, timeout=5) as new:
        deadline = time.monotonic() + 10
        while True:
            try:
                new.list_pools()
                break
            except AuthError:
                assert time.monotonic() < deadline, "the rotated token was never accepted"
                time.sleep(0.2)
    with SelectorClient(running.address, token=WRITE_TOKEN, timeout=5) as old:
        expect_code(grpc.StatusCode.UNAUTHENTICATED, old.list_pools)
    write(Path(path), "broken line\n")  # a bad rewrite keeps the tokens in force
    time.sleep(1.2)
    with SelectorClient(running.address, token=rotated, timeout=5) as new:
        assert new.list_pools() == []


def test_auth_failures_are_counted_by_reason(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    running = make_server(auth_tokens_file=tokens_file(tmp_path))
    with SelectorClient(running.address, timeout=5) as anonymous, pytest.raises(AuthError):
        anonymous.list_pools()
    with (
        SelectorClient(running.address, token=READ_TOKEN, timeout=5) as reader,
        pytest.raises(AuthError),
    ):
        reader.create_pool("p", ["a"])
    assert running.metrics is not None
    reg = running.metrics.registry
    assert reg.get_sample_value("bots_auth_failures_total", {"reason": "missing"}) == 1
    assert reg.get_sample_value("bots_auth_failures_total", {"reason": "forbidden"}) == 1
    labels = {
        "service": "bots.v1.TaskSelector",
        "method": "CreatePool",
        "code": "PERMISSION_DENIED",
    }
    assert reg.get_sample_value("bots_rpc_handled_total", labels) == 1


def test_a_bad_token_file_stops_the_start_without_echoing_tokens(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    path = write(tmp_path / "tokens", f"{WRITE_TOKEN} write\n{READ_TOKEN} reader\n")
    with pytest.raises(RuntimeError) as info:
        make_server(auth_tokens_file=path)
    assert f"{path}:2:" in str(info.value)
    assert WRITE_TOKEN not in str(info.value) and READ_TOKEN not in str(info.value)
    with pytest.raises(RuntimeError, match="cannot read auth_tokens_file"):
        make_server(auth_tokens_file=str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="holds no token"):
        make_server(auth_tokens_file=write(tmp_path / "empty", "# nothing\n"))


# ------------------------------------------------ secrets stay out of logs


def test_tokens_and_redis_passwords_never_reach_logs_or_metrics(tmp_path: Path) -> None:
    import redis as redis_py

    redis = RedisProcess(tmp_path / "redis").start()
    admin = redis_py.Redis(port=redis.port)
    admin.config_set("requirepass", REDIS_PASSWORD)
    admin.close()
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    env.update(PYTHONUNBUFFERED="1", BOTS_AUTH_TOKEN=ENV_TOKEN)
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0"
    cmd = [
        sys.executable, "-m", "bots_server", "serve", "--port", str(port),
        "--metrics-port", str(metrics_port), "--redis-url", url,
        "--auth-tokens-file", tokens_file(tmp_path), "--log-level", "debug",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        with SelectorClient(target, token=WRITE_TOKEN, timeout=5) as writer:
            writer.create_pool("p", ["a", "b"])
            sel = writer.select_batch("p", 1)
            writer.report_outcomes("p", {sel.keys[0]: (1, 2)}, selection_id=sel.selection_id)
        for token in (READ_TOKEN, "guessed-token-0123456789-SECRET"):
            with (
                SelectorClient(target, token=token, timeout=5) as other,
                pytest.raises(AuthError),
            ):
                other.create_pool("q", ["a"])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        text = metrics.read().decode()
        assert 'bots_auth_failures_total{reason="invalid"} 1.0' in text
        # Make Redis fail under the server, so that error paths log too.
        redis.stop()
        with (
            SelectorClient(target, token=WRITE_TOKEN, timeout=5, retries=0) as writer,
            pytest.raises(UnavailableError),
        ):
            writer.get_pool("p")
        time.sleep(1.5)  # let the health watcher log the outage
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        redis.stop()
    logged = log_path.read_text()
    assert "effective config" in logged and "'auth_token': '***'" in logged
    assert "redis://:***@127.0.0.1" in logged
    for secret in (WRITE_TOKEN, READ_TOKEN, ENV_TOKEN, REDIS_PASSWORD, "guessed-token"):
        assert secret not in logged, secret
        assert secret not in text, secret
    assert "SECRET" not in logged and "SECRET" not in text


def test_in_process_logs_never_show_the_token(
    make_server: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = make_server(auth_tokens_file=tokens_file(tmp_path), auth_token=ENV_TOKEN)
    with (
        SelectorClient(running.address, token="wrong-token-0123456789-SECRET", timeout=5) as c,
        pytest.raises(AuthError),
    ):
        c.list_pools()
    assert "refused a call" in caplog.text
    assert "SECRET" not in caplog.text


def test_the_cli_talks_to_a_tls_server_with_a_token(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki: Pki
) -> None:
    running = make_server(**tls_files(tmp_path, pki), auth_token=ENV_TOKEN)
    ca = write(tmp_path / "ca-cli.pem", pki.ca)
    tasks = write(tmp_path / "tasks.jsonl", '{"key": "a"}\n{"key": "b"}\n')
    base = [sys.executable, "-m", "bots_server", "--target", localhost(running), "--ca-file", ca]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTS_")}
    ok = subprocess.run(
        [*base, "--token", ENV_TOKEN, "pool", "create", "p", "--tasks", tasks],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    shown = subprocess.run(
        [*base, "pool", "show", "p", "--json"],
        capture_output=True, text=True, timeout=60, env={**env, "BOTS_TOKEN": ENV_TOKEN},
    )  # fmt: skip
    assert shown.returncode == 0 and '"task_count": 2' in shown.stdout, shown.stderr
    denied = subprocess.run(
        [*base, "pool", "list"], capture_output=True, text=True, timeout=60, env=env
    )
    assert denied.returncode == 1
    assert "UNAUTHENTICATED" in denied.stderr or "token" in denied.stderr.lower()
    assert "Traceback" not in denied.stderr
    healthy = subprocess.run([*base, "check"], capture_output=True, text=True, timeout=60, env=env)
    assert healthy.returncode == 0 and "SERVING" in healthy.stdout

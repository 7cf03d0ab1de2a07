"""Security settings without a network: token files, roles per method, redaction."""

from __future__ import annotations

import pytest
from bots_server._auth import (
    MIN_TOKEN_LENGTH,
    READ,
    WRITE,
    bearer_token,
    parse_tokens,
    required_role,
)
from bots_server._settings import ServerSettings, redact_url

WRITE_TOKEN = "w" * 24
READ_TOKEN = "r" * 24


def test_token_file_lines_map_tokens_to_roles() -> None:
    table = parse_tokens(
        f"# comment\n\n{WRITE_TOKEN} write\n  {READ_TOKEN}   read  # trailing comment\n", "t"
    )
    assert sorted(table.values()) == [READ, WRITE]
    assert WRITE_TOKEN.encode() not in b"".join(table)  # only digests are kept


@pytest.mark.parametrize(
    "line",
    [f"{WRITE_TOKEN}", f"{WRITE_TOKEN} admin", f"{WRITE_TOKEN} write extra", "short write"],
)
def test_a_bad_token_line_names_the_line_but_never_the_token(line: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_tokens(f"{READ_TOKEN} read\n{line}\n", "tokens.txt")
    assert str(info.value).startswith("tokens.txt:2:")
    assert WRITE_TOKEN not in str(info.value) and "short" not in str(info.value)


def test_tokens_must_be_long_enough() -> None:
    parse_tokens("x" * MIN_TOKEN_LENGTH + " read", "t")
    with pytest.raises(ValueError, match="at least"):
        parse_tokens("x" * (MIN_TOKEN_LENGTH - 1) + " read", "t")


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("SelectBatch", READ),
        ("GetPool", READ),
        ("ListPools", READ),
        ("ExportPosteriors", READ),
        ("CreatePool", WRITE),
        ("AddTasks", WRITE),
        ("ReportOutcomes", WRITE),
        ("DeletePool", WRITE),
        ("ImportPosteriors", WRITE),
        ("SomeFutureMethod", WRITE),
    ],
)
def test_roles_per_method(method: str, role: str) -> None:
    assert required_role(f"/bots.v1.TaskSelector/{method}") == role


def test_health_is_open_and_reflection_needs_any_token() -> None:
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.health.v1.Health/Watch") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == READ


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("x-other", "1"), ("authorization", "Bearer abc")), "abc"),
        ((("authorization", "Basic abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_token_parsing(metadata: object, token: str | None) -> None:
    assert bearer_token(metadata) == token


def test_redacted_settings_hide_the_token_and_redis_passwords() -> None:
    s = ServerSettings(
        auth_token=WRITE_TOKEN,
        redis_url="redis://user:hunter2hunter2@redis:6379/0?password=hunter3hunter3",
        auth_tokens_file="/etc/bots/tokens",
    )
    shown = repr(s.redacted())
    assert WRITE_TOKEN not in shown
    assert "hunter2" not in shown and "hunter3" not in shown
    assert s.redacted()["auth_token"] == "***"
    assert s.redacted()["auth_tokens_file"] == "/etc/bots/tokens"  # a path, not a secret
    assert ServerSettings().redacted()["auth_token"] == ""


def test_redact_url_leaves_urls_without_secrets_alone() -> None:
    for url in ("", "redis://127.0.0.1:6379/0", "rediss://h:1/0?ssl_cert_reqs=none"):
        assert redact_url(url) == url


def test_operations_settings_come_from_the_environment() -> None:
    s = ServerSettings.from_env(
        {
            "BOTS_METRICS_PORT": "-1",
            "BOTS_METRICS_MAX_POOLS": "7",
            "BOTS_MAX_CONCURRENT_RPCS": "3",
            "BOTS_AUTH_TOKEN": WRITE_TOKEN,
            "BOTS_TLS_CERT_FILE": "/c.pem",
            "BOTS_HEALTH_PORT": "50052",
        }
    )
    assert (s.metrics_port, s.metrics_max_pools, s.max_concurrent_rpcs) == (-1, 7, 3)
    assert (s.auth_token, s.tls_cert_file, s.health_port) == (WRITE_TOKEN, "/c.pem", 50052)

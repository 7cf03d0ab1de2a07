"""Server settings: one frozen dataclass, read from flags and BOTS_* variables."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Every knob of `bots serve`, with its default.

    Each field can be set with the flag ``--<field-with-dashes>`` or the
    environment variable ``BOTS_<FIELD>`` (flags win).

    Attributes:
        host: Address to listen on.
        port: gRPC port (0 picks a free one).
        data_dir: Directory of the embedded store.
        snapshot_every: Journal records after which a pool is snapshotted.
        fsync: Whether each journal record is fsynced before it is acknowledged.
        grace_seconds: How long SIGTERM waits for RPCs in flight.
        max_message_bytes: Largest request or response message.
        max_batch_size: Largest SelectBatch batch.
        max_outcomes_per_report: Largest number of outcomes in one report.
        max_tasks_per_pool: Most tasks one pool may hold.
        workers: Threads serving unary RPCs (streaming calls get max_streams more on top).
        max_streams: Streaming calls (export, import, health Watch, reflection) served at once; more get RESOURCE_EXHAUSTED.
        stream_idle_seconds: A streaming call that neither receives a message nor has one read for this long is cancelled (0 = never).
        expiry_interval_seconds: How often open selections are checked for expiry.
        log_level: Python logging level name.
        redis_url: Redis URL (redis:// or rediss://); empty = embedded store.
        redis_cluster: Treat redis_url as a node of a Redis Cluster.
        redis_timeout_seconds: Connect and command timeout towards Redis.
        checkpoint_every: Log records after which a replica checkpoints a Redis pool.
        dedup_ttl_seconds: How long the request id of a standalone report is remembered.
        request_ids_remembered: Most standalone-report request ids a pool remembers.
        selection_retention_seconds: How long a closed selection can be replayed.
        selections_remembered: Most closed selections a pool remembers.
        max_open_selections: Most open selections a pool holds (RESOURCE_EXHAUSTED beyond).
        max_concurrent_rpcs: RPCs served or queued at once; more get RESOURCE_EXHAUSTED (0 = no limit).
        metrics_port: Port of the Prometheus /metrics endpoint (0 picks a free one, -1 turns it off).
        metrics_host: Address of the /metrics endpoint (empty = same as host).
        metrics_max_pools: Most pools given per-pool metrics (bounds the label cardinality).
        health_port: Extra plaintext port serving only grpc.health.v1, for probes when TLS is on (-1 = off).
        tls_cert_file: PEM server certificate (chain); with tls_key_file turns TLS on.
        tls_key_file: PEM private key of tls_cert_file.
        tls_client_ca_file: PEM CA that client certificates must chain to (mutual TLS).
        auth_tokens_file: File of '<token> <role>' lines (role read or write); turns token auth on.
        auth_token: One write token (secret; prefer the BOTS_AUTH_TOKEN variable to the flag).
        refusal_log_seconds: Refused calls are logged at most once per peer address and reason per this many seconds (0 = log each one).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: str = "./bots-data"
    snapshot_every: int = 1000
    fsync: bool = True
    grace_seconds: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_batch_size: int = 65536
    max_outcomes_per_report: int = 1_000_000
    max_tasks_per_pool: int = 50_000_000
    workers: int = 16
    max_streams: int = 8
    stream_idle_seconds: float = 60.0
    expiry_interval_seconds: float = 1.0
    log_level: str = "INFO"
    redis_url: str = ""
    redis_cluster: bool = False
    redis_timeout_seconds: float = 2.0
    checkpoint_every: int = 256
    dedup_ttl_seconds: int = 7 * 86400
    request_ids_remembered: int = 100_000
    selection_retention_seconds: int = 86400
    selections_remembered: int = 4096
    max_open_selections: int = 4096
    max_concurrent_rpcs: int = 1024
    metrics_port: int = 9464
    metrics_host: str = ""
    metrics_max_pools: int = 50
    health_port: int = -1
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_tokens_file: str = ""
    auth_token: str = ""
    refusal_log_seconds: float = 60.0

    @property
    def address(self) -> str:
        """host:port as gRPC wants it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Defaults, then BOTS_* variables, then non-None ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"BOTS_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict fit for logs: passwords in URLs and tokens are masked."""
        out = dataclasses.asdict(self)
        out["redis_url"] = redact_url(self.redis_url)
        out["auth_token"] = "***" if self.auth_token else ""
        return out


def redact_url(url: str) -> str:
    """``url`` with every secret in it masked, fit for logs.

    ``redis://user:secret@host`` -> ``redis://user:***@host``;
    ``redis://:secret@host`` -> ``redis://:***@host``; a bare
    ``redis://secret@host`` (which many clients read as a password) ->
    ``redis://***@host``; ``?password=secret`` -> ``?password=***``. The host
    part is kept verbatim (IPv6 brackets included). Works for any scheme.
    """
    parts = urllib.parse.urlsplit(url)
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            masked = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urllib.parse.urlencode(masked, safe="*")
    # rpartition: an unencoded '@' inside a password belongs to the userinfo.
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, _secret = userinfo.partition(":")
        # Without a colon the single field may well be a password: mask it whole.
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Rebuilt by hand: urlunsplit drops the '//' of an empty authority (unix:///path).
    out = f"{parts.scheme}:" if parts.scheme else ""
    if url[len(out) :].startswith("//"):
        out += f"//{netloc}"
    out += parts.path
    if query:
        out += f"?{query}"
    if parts.fragment:
        out += f"#{parts.fragment}"
    return out


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"BOTS_{name.upper()}={raw!r} is not a valid {type_name}") from None
    return raw

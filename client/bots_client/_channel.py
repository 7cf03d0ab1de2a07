"""Channel settings shared by the sync and asyncio clients: options, retries, credentials."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import grpc

from bots_client._errors import InvalidRequestError

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 5
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME = "bots.v1.TaskSelector"

# gRPC clamps maxAttempts to 5 whatever the service config says.
_MAX_CHANNEL_ATTEMPTS = 5
INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
BACKOFF_MULTIPLIER = 2.0

# Codes after which calls that are idempotent by contract (ReportOutcomes with
# its request id, SelectBatch with a run id) are sent again by the client
# itself: the request may have been applied while its answer was lost.
APP_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Metadata = tuple[tuple[str, str], ...]


def check_settings(timeout: float, retries: int) -> None:
    """Validates the client-wide knobs.

    Raises:
        InvalidRequestError: If ``timeout`` is not positive or ``retries`` is negative.
    """
    check_timeout(timeout)
    if retries < 0:
        raise InvalidRequestError(f"retries must be >= 0, got {retries!r}")


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a usable deadline in seconds.

    Raises:
        InvalidRequestError: If ``timeout`` is not a positive number.
    """
    if not timeout > 0:
        raise InvalidRequestError(f"timeout must be > 0 seconds, got {timeout!r}")
    return timeout


def service_config(retries: int) -> dict[str, Any]:
    """The service config: retry UNAVAILABLE with backoff, throttled channel-wide.

    Args:
        retries: Retries after the first attempt (gRPC allows at most 4).
    """
    config: dict[str, Any] = {
        # Retries stop while more than half of recent calls failed, so an
        # outage does not multiply the load on the server.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    attempts = min(retries + 1, _MAX_CHANNEL_ATTEMPTS)
    if attempts >= 2:
        config["methodConfig"] = [
            {
                "name": [{"service": SERVICE_NAME}],
                "retryPolicy": {
                    "maxAttempts": attempts,
                    "initialBackoff": f"{INITIAL_BACKOFF_S}s",
                    "maxBackoff": f"{MAX_BACKOFF_S}s",
                    "backoffMultiplier": BACKOFF_MULTIPLIER,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def channel_options(
    retries: int, extra: Sequence[tuple[str, Any]] | None = None
) -> list[tuple[str, Any]]:
    """Channel arguments: message limits, retries and service config; ``extra`` wins."""
    options: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.enable_retries": 1,
        # A call whose request is larger than this buffer cannot be retried;
        # the default (256 KiB) would exclude full AddTasks chunks.
        "grpc.per_rpc_retry_buffer_size": 16 * 1024 * 1024,
        "grpc.service_config": json.dumps(service_config(retries)),
    }
    for key, value in extra or ():
        options[key] = value
    return list(options.items())


def channel_credentials(
    root_certificates: bytes | None, token: str | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials (with the token as a bearer call credential), or None for plaintext."""
    if root_certificates is None:
        return None
    creds = grpc.ssl_channel_credentials(root_certificates=root_certificates or None)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


def call_metadata(token: str | None, token_in_credentials: bool) -> Metadata | None:
    """Per-call metadata carrying the token when the channel credentials do not."""
    if not token or token_in_credentials:
        return None
    return (("authorization", f"Bearer {token}"),)


def backoff_seconds(attempt: int) -> float:
    """Sleep before client-level retry number ``attempt`` (0-based), with jitter."""
    ceiling = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * BACKOFF_MULTIPLIER**attempt)
    return ceiling / 2 + random.uniform(0.0, ceiling / 2)

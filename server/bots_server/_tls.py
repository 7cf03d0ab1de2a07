"""TLS for the gRPC port: server certificate, and client certificates for mutual TLS."""

from __future__ import annotations

import grpc


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RuntimeError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise RuntimeError(f"{what} {path} is not PEM")
    return data


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str = ""
) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plaintext (no file given).

    With ``client_ca_file`` the server requires a client certificate signed by
    that CA (mutual TLS).

    Raises:
        RuntimeError: a file is missing or unreadable, or the set is incomplete.
    """
    if not (cert_file or key_file or client_ca_file):
        return None
    if not (cert_file and key_file):
        raise RuntimeError("TLS needs both tls_cert_file and tls_key_file")
    cert = _read_pem(cert_file, "tls_cert_file")
    key = _read_pem(key_file, "tls_key_file")
    ca = _read_pem(client_ca_file, "tls_client_ca_file") if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )

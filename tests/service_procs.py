"""Real processes for tests: redis-server and `bots serve` on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(address: str, timeout: float = 0.5) -> bool:
    """True when a gRPC health check at ``address`` answers SERVING.

    A plain RPC with a deadline, rather than ``channel_ready_future``, whose
    polling thread can outlive the channel and fail after it is closed.
    """
    with grpc.insecure_channel(address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A real ``redis-server`` on a free loopback port, in its own directory.

    ``kill()`` is kill -9; ``start()`` again restarts it on the same port and
    directory (so AOF data comes back when ``appendonly`` is on).
    """

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        port: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.aof = aof
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        import redis

        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        cmd = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            str(self.dir),
            *persistence,
            *self.extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                if client.ping():
                    client.close()
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class ServerProcess:
    """`python -m bots_server serve` in a subprocess, on a fixed port and data dir."""

    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{port}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Starts ``python -m bots_server serve`` on this port and data dir."""
        cmd = [sys.executable, "-m", "bots_server", "serve", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *self.extra]  # fmt: skip
        return self.start_in(None, cmd, timeout)

    def start_in(self, cwd: Path | None, cmd: list[str], timeout: float = 20.0) -> ServerProcess:
        """Runs ``cmd`` (a server that will listen on this port) and waits until it serves."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )
        deadline = time.monotonic() + timeout
        while not serving(self.address):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """kill -9: no chance to flush or snapshot."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

"""A small TCP proxy for fault tests: forwards loopback connections and can cut them all."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Listens on a free loopback port and forwards every connection to ``upstream``.

    ``drop_all()`` closes every open connection at once, on both sides, as a
    network fault would: in the middle of whatever request is in flight.
    ``lose_next_reply(over)`` cuts the connection that next sent more than
    ``over`` bytes upstream when its reply comes back, without passing the
    reply on: the request was carried out, its answer is lost.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.drops = 0
        self._lose_over: int | None = None
        self.replies_lost = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=2)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._conns |= {client, server}
            sent = [0]  # bytes this connection has sent upstream
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up, sent), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, sent: list[int]) -> None:
        try:
            while data := src.recv(65536):
                if up:
                    sent[0] += len(data)
                else:
                    with self._lock:
                        lose = self._lose_over is not None and sent[0] > self._lose_over
                        if lose:
                            self._lose_over = None
                            self.replies_lost += 1
                    if lose:
                        return  # both sockets close below; the reply is not passed on
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def lose_next_reply(self, over: int) -> None:
        """Loses the reply to the next connection that has sent more than ``over`` bytes."""
        with self._lock:
            self._lose_over = over

    def drop_all(self) -> int:
        """Cuts every open connection; returns how many sockets were closed."""
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            self._close(sock)
        self.drops += 1
        return len(conns)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._listener.close()
        self.drop_all()

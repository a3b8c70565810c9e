"""A TCP proxy the test owns: forwards 127.0.0.1:<port> to a broker, and can cut the network.

``sever()`` closes every proxied connection and stops listening, so new connections are
refused; ``restore()`` listens again on the same port. The broker behind it never notices more
than clients going away. Runs as greenlets in the test process (geboost patched it), so the
test must wait cooperatively (``time.sleep``, ``Popen.wait``) while the proxy works.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent
from gevent.server import StreamServer

from tests.support import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._server: StreamServer | None = None
        self._sockets: set[socket.socket] = set()
        self._pumps: set[gevent.Greenlet[Any, Any]] = set()
        self.connections_made = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._server is None:
            self._server = StreamServer(("127.0.0.1", self.port), self._handle)
            self._server.reuse_addr = 1
            self._server.start()

    restore = start

    def sever(self) -> None:
        """Drop every connection and refuse new ones until ``restore``."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for sock in list(self._sockets):
            _close(sock)
        self._sockets.clear()
        gevent.killall(list(self._pumps), block=True, timeout=5)

    close = sever

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sever()

    def _handle(self, client: socket.socket, _address: Any) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        self.connections_made += 1
        self._sockets.update((client, upstream))
        pumps = [
            gevent.spawn(self._pump, client, upstream),
            gevent.spawn(self._pump, upstream, client),
        ]
        self._pumps.update(pumps)
        gevent.joinall(pumps)
        self._pumps.difference_update(pumps)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side gone: the other must see it too, as with a real network cut.
            for sock in (src, dst):
                _close(sock)
                self._sockets.discard(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

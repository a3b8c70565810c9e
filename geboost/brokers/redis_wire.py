"""One Redis connection spoken to directly: what a receiver uses instead of a ``Redis`` client.

A receiver owns its connection (one per puller) and sends one command at a time from one
greenlet, so a client's machinery -- a pool to check the connection out of and back into,
fork and stale-data checks, retry wrappers, per-command reply callbacks -- buys it nothing on
its hot path, and measured as much as the work itself: about half of a Redis worker's time
consuming no-op tasks went to redis-py's dispatch around one script call per batch. The wire
keeps redis-py's ``Connection`` (socket, TLS, AUTH, SELECT, CLIENT SETNAME, health checks, the
reply parser) and skips the rest. Replies come back raw (bytes, ints, lists, None); the take's,
always an integer and two strings, is read off the socket here (``read_triple``).

Scripts run by their SHA1 (``EVALSHA``); a server that does not know one (restarted, flushed)
answers ``NOSCRIPT`` without running anything, and the wire loads it and sends the same command
again.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from hashlib import sha1
from typing import Any

from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from geboost.brokers.redis_config import RedisTarget

try:  # redis-py's own mapping of error replies to its exception classes
    from redis._parsers.base import BaseParser

    _parse_error: Callable[[str], RedisError] = BaseParser.parse_error
except ImportError:  # pragma: no cover - a redis-py that moved it

    def _parse_error(message: str) -> RedisError:
        if message.startswith("NOSCRIPT"):
            return NoScriptError(message)
        return ResponseError(message)


__all__ = ["LuaScript", "Wire", "bulk", "run_script", "send_packed"]

_RECV_SIZE = 65536


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class LuaScript:
    """A script's source and SHA1, computed once (no round trip)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()


class Wire:
    """See the module docstring. Connects on first use and again after any failure (redis-py's
    connection drops its socket on a send or read error); raises redis-py's exceptions, which
    the receiver translates."""

    __slots__ = ("_conn", "_rest")

    def __init__(self, target: RedisTarget) -> None:
        self._conn: AbstractConnection = target.connection_class(**target.connection_kwargs)
        # Bytes read past the take reply just returned: the start of the next take's (takes
        # sent ahead answer back to back). Empty whenever no take is on its way.
        self._rest = b""

    def call(self, *args: Any) -> Any:
        conn = self._conn
        conn.send_command(*args)  # type: ignore[no-untyped-call]
        return conn.read_response()

    def send_take(self, packed: bytes) -> None:
        """Send a take (an ``EVALSHA`` in RESP form) without reading its reply: takes may be
        sent ahead, their replies read in order by ``read_triple``."""
        send_packed(self._conn, packed)

    def read_triple(self) -> tuple[int, bytes, bytes]:
        """The next reply, a take's: ``{integer, string, string}``, read off the socket here
        rather than by redis-py's parser, a few ``find`` calls instead of its nine reads
        through its buffer (measured: about a tenth of a take's client time). An error reply
        raises as redis-py would raise it."""
        conn = self._conn
        sock: socket.socket | None = getattr(conn, "_sock", None)
        if sock is None:
            self._rest = b""
            raise RedisConnectionError("not connected")
        reply, self._rest = _read_triple(conn, sock, self._rest)
        if isinstance(reply, RedisError):
            raise reply  # after keeping what follows it: the replies to later takes
        return reply

    def load(self, script: LuaScript) -> None:
        """``SCRIPT LOAD``; only with no reply on its way."""
        _load(self._conn, script)

    def run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            _load(self._conn, script)
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def disconnect(self) -> None:
        self._rest = b""
        self._conn.disconnect()  # type: ignore[no-untyped-call]


def _send(conn: AbstractConnection, sock: socket.socket, packed: bytes) -> None:
    try:
        sent = sock.send(packed)
        if sent < len(packed):
            sock.sendall(memoryview(packed)[sent:])
    except BaseException as exc:
        # As redis-py's own send: the connection is unusable after a partial write.
        raise _broken(conn, exc, "writing to") from exc


def _broken(conn: AbstractConnection, exc: BaseException, doing: str) -> BaseException:
    """The connection after a failed read or write: dropped, the error in redis-py's terms."""
    conn.disconnect()  # type: ignore[no-untyped-call]
    if isinstance(exc, socket.timeout):
        return RedisTimeoutError(f"Timeout {doing} socket")
    if isinstance(exc, OSError):
        return RedisConnectionError(f"Error while {doing} socket: {exc}")
    return exc


def send_packed(conn: AbstractConnection, packed: bytes) -> None:
    """Send one command already in RESP form on ``conn``, without reading its reply.

    On an open connection the bytes go out by one ``send`` on its socket: gevent's ``sendall``
    asks the kernel for the buffer size and slices a memoryview on every call, which measured
    a fifth of a take's client time. No health check here: the callers (a receiver's takes,
    the state store's batch writes) use busy connections. Should redis-py stop keeping its
    socket in ``_sock``, this falls back to its own send.
    """
    sock = getattr(conn, "_sock", None)
    if sock is None:  # not connected yet (or after a failure): redis-py connects first
        conn.send_packed_command([packed])  # type: ignore[no-untyped-call]
    else:
        _send(conn, sock, packed)


def _read_triple(
    conn: AbstractConnection, sock: socket.socket, buf: bytes
) -> tuple[tuple[int, bytes, bytes] | RedisError, bytes]:
    """The reply at the start of ``buf`` (an error reply as redis-py's exception) and what
    follows it, reading more as needed."""
    while True:
        if buf[:1] == b"-":  # an error reply: one line
            end = buf.find(b"\r\n")
            if end >= 0:
                return _parse_error(buf[1:end].decode(errors="replace")), buf[end + 2 :]
        elif buf:
            try:
                parsed = _parse_triple(buf)
            except RedisConnectionError:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            if parsed is not None:
                reply, size = parsed
                return reply, buf[size:]
        try:
            more = sock.recv(_RECV_SIZE)
        except BaseException as exc:
            raise _broken(conn, exc, "reading from") from exc
        if not more:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise RedisConnectionError("Connection closed by server.")
        buf += more


def _parse_triple(buf: bytes) -> tuple[tuple[int, bytes, bytes], int] | None:
    """``*3 :int $a <a bytes> $b <b bytes>`` at the start of ``buf``: (the three, where the
    reply ends), or None while incomplete; an error reply is left to the caller, any other
    shape is a protocol error."""
    if buf[:1] != b"*":
        raise RedisConnectionError(f"unexpected reply to a take: {buf[:40]!r}")
    end = buf.find(b"\r\n:", 2)
    if end < 0:
        return None
    if buf[:end] != b"*3":
        raise RedisConnectionError(f"unexpected reply to a take: {buf[:40]!r}")
    start = end + 3
    end = buf.find(b"\r\n$", start)
    if end < 0:
        return None
    status = int(buf[start:end])
    parts: list[bytes] = []
    for _ in range(2):
        start = end + 3
        end = buf.find(b"\r\n", start)
        if end < 0:
            return None
        size = int(buf[start:end])
        start = end + 2
        end = start + size
        if len(buf) < end + 2:
            return None
        parts.append(buf[start:end])
    return (status, parts[0], parts[1]), end + 2


def run_script(conn: AbstractConnection, script: LuaScript, args: list[bytes]) -> Any:
    """``EVALSHA`` of ``script`` with no keys and ``args``, packed here in one piece, and its
    reply; after ``NOSCRIPT`` (nothing ran) the script is loaded and the same command sent
    again."""
    head = b"*%d\r\n" % (3 + len(args)) + bulk(b"EVALSHA") + bulk(script.sha.encode()) + bulk(b"0")
    packed = head + b"".join([bulk(arg) for arg in args])
    try:
        send_packed(conn, packed)
        return conn.read_response()
    except NoScriptError:
        _load(conn, script)
        send_packed(conn, packed)
        return conn.read_response()


def _load(conn: AbstractConnection, script: LuaScript) -> None:
    conn.send_command("SCRIPT", "LOAD", script.source)  # type: ignore[no-untyped-call]
    conn.read_response()

"""One Redis connection spoken to directly: what a receiver uses instead of a ``Redis`` client.

A receiver owns its connection (one per puller) and sends one command at a time from one
greenlet, so a client's machinery -- a pool to check the connection out of and back into,
fork and stale-data checks, retry wrappers, per-command reply callbacks -- buys it nothing on
its hot path, and measured as much as the work itself: about half of a Redis worker's time
consuming no-op tasks went to redis-py's dispatch around one script call per batch. The wire
keeps redis-py's ``Connection`` (socket, TLS, AUTH, SELECT, CLIENT SETNAME, health checks, the
reply parser) and skips the rest. Replies come back raw (bytes, ints, lists, None).

Scripts run by their SHA1 (``EVALSHA``); a server that does not know one (restarted, flushed)
answers ``NOSCRIPT`` without running anything, and the wire loads it and sends the same command
again.
"""

from __future__ import annotations

import socket
from hashlib import sha1
from typing import Any

from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from geboost.brokers.redis_config import RedisTarget

__all__ = ["LuaScript", "Wire", "bulk", "exchange", "exchange_script", "run_script"]


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

    __slots__ = ("_conn",)

    def __init__(self, target: RedisTarget) -> None:
        self._conn: AbstractConnection = target.connection_class(**target.connection_kwargs)

    def call(self, *args: Any) -> Any:
        conn = self._conn
        conn.send_command(*args)  # type: ignore[no-untyped-call]
        return conn.read_response()

    def run_packed(self, script: LuaScript, packed: bytes) -> Any:
        """``exchange_script`` on this wire's connection."""
        return exchange_script(self._conn, script, packed)

    def run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            _load(self._conn, script)
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def disconnect(self) -> None:
        self._conn.disconnect()  # type: ignore[no-untyped-call]


def exchange(conn: AbstractConnection, packed: bytes) -> Any:
    """Send one command already in RESP form on ``conn`` and read its reply.

    On an open connection the bytes go out by one ``send`` on its socket: gevent's ``sendall``
    asks the kernel for the buffer size and slices a memoryview on every call, which measured
    a fifth of a take's client time. No health check here: the callers (a receiver's take, the
    state store's batch writes) use busy connections. Should redis-py stop keeping its socket
    in ``_sock``, this falls back to its own send.
    """
    sock = getattr(conn, "_sock", None)
    if sock is None:  # not connected yet (or after a failure): redis-py connects first
        conn.send_packed_command([packed])  # type: ignore[no-untyped-call]
        return conn.read_response()
    try:
        sent = sock.send(packed)
        if sent < len(packed):
            sock.sendall(memoryview(packed)[sent:])
    except BaseException as exc:
        # As redis-py's own send: the connection is unusable after a partial write.
        conn.disconnect()  # type: ignore[no-untyped-call]
        if isinstance(exc, socket.timeout):
            raise RedisTimeoutError("Timeout writing to socket") from exc
        if isinstance(exc, OSError):
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        raise
    return conn.read_response()


def exchange_script(conn: AbstractConnection, script: LuaScript, packed: bytes) -> Any:
    """``exchange`` of ``packed``, an ``EVALSHA`` of ``script``; after ``NOSCRIPT`` (nothing
    ran) the script is loaded and the same command sent again."""
    try:
        return exchange(conn, packed)
    except NoScriptError:
        _load(conn, script)
        return exchange(conn, packed)


def run_script(conn: AbstractConnection, script: LuaScript, args: list[bytes]) -> Any:
    """``EVALSHA`` of ``script`` with no keys and ``args``, packed here in one piece (see
    ``exchange_script``)."""
    head = b"*%d\r\n" % (3 + len(args)) + bulk(b"EVALSHA") + bulk(script.sha.encode()) + bulk(b"0")
    return exchange_script(conn, script, head + b"".join([bulk(arg) for arg in args]))


def _load(conn: AbstractConnection, script: LuaScript) -> None:
    conn.send_command("SCRIPT", "LOAD", script.source)  # type: ignore[no-untyped-call]
    conn.read_response()

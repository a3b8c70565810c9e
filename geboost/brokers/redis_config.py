"""Where the Redis broker connects and with which settings: URL parsing (password masked for
display) and the transport options, checked once when the broker is built.

The options are documented in the table of ``geboost.brokers.redis``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from gevent.queue import LifoQueue
from redis import BlockingConnectionPool
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection
from redis.connection import UnixDomainSocketConnection as UnixConnection
from redis.retry import Retry

from geboost.brokers.base import mask_url, parse_transport_options
from geboost.errors import ConfigurationError

__all__ = ["RedisSettings", "RedisTarget", "parse_target"]

_SSL_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


class RedisSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The transport options with their defaults; ranges are checked in ``__post_init__``."""

    socket_timeout_s: float = 5.0
    socket_connect_timeout_s: float = 3.0
    socket_keepalive: bool = True
    health_check_interval_s: float = 30.0
    client_name: str = ""
    pool_max_connections: int = 4
    pool_timeout_s: float = 10.0
    heartbeat_interval_s: float = 5.0
    lease_timeout_s: float = 30.0
    recovery_interval_s: float = 10.0
    publish_chunk_size: int = 10_000
    ssl_ca_certs: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        for name in (
            "socket_timeout_s",
            "socket_connect_timeout_s",
            "pool_timeout_s",
            "heartbeat_interval_s",
            "lease_timeout_s",
            "recovery_interval_s",
        ):
            _positive(name, getattr(self, name))
        if not math.isfinite(self.health_check_interval_s) or self.health_check_interval_s < 0:
            raise _bad("health_check_interval_s", self.health_check_interval_s, "a number >= 0")
        for name in ("pool_max_connections", "publish_chunk_size"):
            if getattr(self, name) < 1:
                raise _bad(name, getattr(self, name), "an int >= 1")
        # A beat late by one interval breaks this worker's promise (2 intervals, read as an
        # outage) while its lease still has at least one interval left to renew in.
        if self.lease_timeout_s < 3 * self.heartbeat_interval_s:
            raise _bad(
                "lease_timeout_s",
                self.lease_timeout_s,
                f"at least 3 x heartbeat_interval_s ({self.heartbeat_interval_s})",
            )
        if self.ssl_cert_reqs not in ("required", "optional", "none"):
            raise _bad("ssl_cert_reqs", self.ssl_cert_reqs, "'required', 'optional' or 'none'")

    @property
    def recovery_bound_s(self) -> float:
        """Longest a dead consumer's messages stay held: lease plus one recovery period."""
        return self.lease_timeout_s + self.recovery_interval_s

    @property
    def lease_args(self) -> tuple[int, int]:
        """What a lease-writing script is told (ms): how soon this worker promises to touch
        the queue again (2 beats), and how long its lease lasts."""
        return int(2 * self.heartbeat_interval_s * 1000), int(self.lease_timeout_s * 1000)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisSettings:
        return parse_transport_options("redis", options, cls)


class _Kwargs(dict[str, Any]):
    """Connection settings whose repr (in tracebacks, debuggers, loguru's ``diagnose``) hides
    the password."""

    def __repr__(self) -> str:
        return repr({k: "***" if k == "password" and v else v for k, v in self.items()})


class RedisTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed broker URL: what redis-py needs to connect, and a display form without secrets."""

    connection_class: type[Connection] | type[UnixConnection]
    connection_kwargs: dict[str, Any]
    display: str

    def __repr__(self) -> str:
        return f"RedisTarget({self.display})"

    def shared_pool(self, max_connections: int, timeout_s: float) -> BlockingConnectionPool:
        """A pool for any number of greenlets: waiting for a free connection goes through
        gevent's LifoQueue (the stdlib queue's waits are not greenlet-aware unless threading is
        patched), and at most ``max_connections`` ever open, however many greenlets ask."""
        return BlockingConnectionPool(  # type: ignore[no-untyped-call]
            connection_class=self.connection_class,
            max_connections=max_connections,
            timeout=timeout_s,
            queue_class=LifoQueue,
            **self.connection_kwargs,
        )


def parse_target(url: str, settings: RedisSettings, given: dict[str, Any]) -> RedisTarget:
    """Parse ``broker_url`` (``host:port``, ``redis://``, ``rediss://``, ``unix://``; empty means
    ``localhost:6379``) and combine it with the settings. ``given`` are the options the user set
    (to reject TLS options on a URL that is not ``rediss://``)."""
    text = url.strip() or "localhost:6379"
    if "://" not in text:
        text = "redis://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"redis broker_url must be host:port, redis://, rediss:// or unix://, got "
            f"scheme {scheme!r}"
        )
    if scheme != "rediss":
        stray = [name for name in _SSL_OPTIONS if name in given]
        if stray:
            raise ConfigurationError(f"redis transport options {stray} need a rediss:// URL")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ConfigurationError(
            f"redis broker_url has unsupported query parameters {unknown}; use "
            "broker_transport_options"
        )
    display = mask_url(parts.geturl())
    kwargs = _common_kwargs(settings)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    kwargs["db"] = _db(parts.path if scheme != "unix" else "", query)
    if scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise ConfigurationError(f"redis broker_url {display!r} names no socket path")
        kwargs["path"] = path
        return RedisTarget(
            connection_class=UnixConnection, connection_kwargs=kwargs, display=display
        )
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigurationError(f"redis broker_url {display!r}: {exc}") from None
    kwargs["host"] = parts.hostname or "localhost"
    kwargs["port"] = port
    kwargs["socket_keepalive"] = settings.socket_keepalive
    cls: type[Connection] = Connection
    if scheme == "rediss":
        cls = SSLConnection
        kwargs.update(_ssl_kwargs(settings))
    return RedisTarget(connection_class=cls, connection_kwargs=kwargs, display=display)


def _common_kwargs(settings: RedisSettings) -> dict[str, Any]:
    return _Kwargs(
        {
            "socket_timeout": settings.socket_timeout_s,
            "socket_connect_timeout": settings.socket_connect_timeout_s,
            "health_check_interval": settings.health_check_interval_s,
            "client_name": settings.client_name or None,
            # One attempt per call: the booster owns the retry policy (push_retries) and the
            # pullers own reconnecting; redis-py's own backoff would multiply both.
            "retry": Retry(NoBackoff(), 0),
        }
    )


def _ssl_kwargs(settings: RedisSettings) -> dict[str, Any]:
    return {
        "ssl_ca_certs": settings.ssl_ca_certs or None,
        "ssl_certfile": settings.ssl_certfile or None,
        "ssl_keyfile": settings.ssl_keyfile or None,
        "ssl_cert_reqs": settings.ssl_cert_reqs,
        "ssl_check_hostname": settings.ssl_check_hostname,
    }


def _db(path: str, query: dict[str, list[str]]) -> int:
    raw = query["db"][0] if "db" in query else path.strip("/") or "0"
    try:
        db = int(raw)
    except ValueError:
        raise ConfigurationError(f"redis database must be a number, got {raw!r}") from None
    if db < 0:
        raise ConfigurationError(f"redis database must be >= 0, got {db}")
    return db


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise _bad(name, value, "a number > 0")


def _bad(name: str, value: object, expected: str) -> ConfigurationError:
    return ConfigurationError(f"redis transport option {name!r} must be {expected}, got {value!r}")

"""RabbitMQ settings: the broker URL, the transport options, and pika's exceptions translated.

Everything here runs at construction time and never connects, so a bad URL or option fails
``new_booster`` at once with a ``ConfigurationError`` naming it.
"""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import msgspec
import pika
import pika.exceptions

from geboost.brokers.base import is_dead_letter_queue, mask_url, parse_transport_options
from geboost.errors import (
    BrokerAuthenticationError,
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
)

__all__ = ["RabbitOptions", "RabbitSettings", "translate"]

MAX_PRIORITY = 9  # x-max-priority of the work queues geboost declares (priorities 0..9)
_DELAY_QUEUE = re.compile(r"^(?P<target>.+)\.delay-(?P<ttl_ms>[0-9]+)ms$")


def delay_queue_name(queue_name: str, ttl_ms: int) -> str:
    """The queue where messages for ``queue_name`` wait ``ttl_ms`` before moving to it."""
    return f"{queue_name}.delay-{ttl_ms}ms"


RABBITMQ_MAX_MESSAGE_SIZE = 134_217_728  # RabbitMQ's own default for ``max_message_size``


class RabbitOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The transport options, with their defaults: the one list of what a user may set.

    Parsed with ``msgspec.convert`` (strict: a bool is not an int, a str is not a number);
    unknown keys are refused.
    """

    prefetch_count: int = 0  # 0: the receiver's window, ceil(1.25 * concurrent_num / conn_num)
    heartbeat_s: int = 60
    queue_arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    connect_timeout_s: float = 10.0
    blocked_connection_timeout_s: float = 60.0
    confirm_timeout_s: float = 30.0
    confirm_batch_size: int = 1000
    max_message_size: int = RABBITMQ_MAX_MESSAGE_SIZE  # bytes; 0: no check before sending
    tls_ca_file: str = ""
    tls_verify: bool = True


class RabbitSettings(RabbitOptions, frozen=True, kw_only=True):
    """The parsed URL plus the transport options."""

    scheme: str = "amqp"
    host: str = "localhost"
    port: int = 5672
    vhost: str = "/"
    username: str = "guest"
    password: str = "guest"

    @classmethod
    def from_config(cls, url: str, options: Mapping[str, Any]) -> RabbitSettings:
        """Parse ``url`` and ``options``; raises ``ConfigurationError`` naming what is wrong."""
        parsed = parse_transport_options("rabbitmq", options, RabbitOptions)
        if "prefetch_count" in options:  # absent: 0, the receiver's window decides
            _in_range("prefetch_count", parsed.prefetch_count, 1, 65535)
        settings = cls(**_parse_url(url), **msgspec.structs.asdict(parsed))
        settings._check()
        return settings

    def _check(self) -> None:
        # Both travel as AMQP shorts (16 bits) in basic.qos and connection.tune.
        _in_range("heartbeat_s", self.heartbeat_s, 0, 65535)
        _in_range("confirm_batch_size", self.confirm_batch_size, 1, 1_000_000)
        _in_range("max_message_size", self.max_message_size, 0, 2**31)
        for name in ("connect_timeout_s", "blocked_connection_timeout_s", "confirm_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"rabbitmq transport option {name!r} must be a number > 0, got {value!r}"
                )
        if self.tls_ca_file and self.scheme != "amqps":
            raise ConfigurationError(
                "rabbitmq transport option 'tls_ca_file' needs an amqps:// URL"
            )

    def __repr__(self) -> str:
        # The generated repr would print the password.
        return f"RabbitSettings(url={self.masked_url!r})"

    @property
    def masked_url(self) -> str:
        """The URL with the password replaced by ``***``: the only form that is ever logged."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = quote(self.vhost, safe="")
        user = quote(self.username, safe="")
        # Always masked, even an empty or default password: the text never depends on it.
        return mask_url(f"{self.scheme}://{user}:-@{host}:{self.port}/{vhost}")

    def arguments_for(self, queue_name: str) -> dict[str, Any]:
        """Declare arguments: the configured ones, except on dead-letter queues.

        A dead-letter queue keeps its letters until someone looks at them, so a TTL, length
        limit or priority meant for the work queue must not apply to it; only the queue type
        carries over (a quorum work queue gets a quorum dead-letter queue).
        """
        if is_dead_letter_queue(queue_name):
            kept = self.queue_arguments.get("x-queue-type")
            return {} if kept is None else {"x-queue-type": kept}
        delay = _DELAY_QUEUE.match(queue_name)
        if delay is not None:
            # Every message of a delay queue has the same TTL, so they expire in order at its
            # head and dead-letter (with their properties: priority, persistence) into the
            # work queue through the default exchange.
            return {
                "x-message-ttl": int(delay["ttl_ms"]),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": delay["target"],
            }
        arguments = dict(self.queue_arguments)
        if arguments.get("x-queue-type", "classic") == "classic":
            # Priorities need it at declaration; a user's own value (None: leave it out, for a
            # queue declared before geboost had priorities) wins.
            arguments.setdefault("x-max-priority", MAX_PRIORITY)
        return {k: v for k, v in arguments.items() if v is not None}

    def connection_parameters(self, connection_name: str) -> pika.ConnectionParameters:
        """pika's parameters for one connection (one attempt: retrying belongs to the engine)."""
        try:
            return pika.ConnectionParameters(
                host=self.host,
                port=self.port,
                virtual_host=self.vhost,
                credentials=pika.PlainCredentials(self.username, self.password),
                heartbeat=self.heartbeat_s,
                connection_attempts=1,
                retry_delay=0,
                socket_timeout=self.connect_timeout_s,
                stack_timeout=self.connect_timeout_s * 2,
                blocked_connection_timeout=self.blocked_connection_timeout_s,
                ssl_options=self._ssl_options(),
                client_properties={"connection_name": connection_name, "product": "geboost"},
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"rabbitmq settings rejected by pika: {exc}") from exc

    def _ssl_options(self) -> pika.SSLOptions | None:
        if self.scheme != "amqps":
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"rabbitmq transport option 'tls_ca_file' cannot be loaded: {exc}"
            ) from exc
        if not self.tls_verify:
            # Explicit opt-out for test brokers with self-signed certificates.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return pika.SSLOptions(context, server_hostname=self.host)


def _parse_url(url: str) -> dict[str, Any]:
    """``amqp[s]://user:pass@host:port/vhost``, ``host:port``, ``host`` or empty."""
    if not url:
        return {}
    text = url if "://" in url else "amqp://" + url
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"rabbitmq broker_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(
            f"rabbitmq broker_url must start with amqp:// or amqps://, got scheme {parts.scheme!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            "rabbitmq broker_url takes no query string; "
            "put settings in broker_transport_options instead"
        )
    if not parts.hostname:
        raise ConfigurationError("rabbitmq broker_url names no host")
    found: dict[str, Any] = {
        "scheme": parts.scheme,
        "host": parts.hostname,
        "port": port or (5671 if parts.scheme == "amqps" else 5672),
    }
    if parts.username is not None:
        found["username"] = unquote(parts.username)
        found["password"] = unquote(parts.password or "")
    if len(parts.path) > 1:
        found["vhost"] = unquote(parts.path[1:])
    return found


def _in_range(name: str, value: int, minimum: int, maximum: int) -> None:
    if not minimum <= value <= maximum:
        raise ConfigurationError(
            f"rabbitmq transport option {name!r} must be in [{minimum}, {maximum}], got {value!r}"
        )


def translate(exc: BaseException, doing: str, secret: str) -> BrokerError:
    """pika's (or the socket's) exception as ours, with the password scrubbed from the text.

    A closed channel (a refused declare, an unknown queue) is a ``BrokerError``; anything that
    means the connection is gone is a ``BrokerConnectionError``.
    """
    detail = str(exc)
    # Some pika errors only say what happened in their repr (str() is empty).
    text = f"{type(exc).__name__}: {detail}" if detail else repr(exc)
    if secret:
        text = text.replace(secret, "***")
    message = f"rabbitmq {doing} failed: {text}"
    if _is_refused_login(exc):
        return BrokerAuthenticationError(f"{message} (authentication or vhost access refused)")
    if isinstance(exc, (pika.exceptions.AMQPChannelError, pika.exceptions.ChannelError)):
        return BrokerError(message)
    if isinstance(exc, (pika.exceptions.AMQPError, OSError)):
        return BrokerConnectionError(message)
    return BrokerError(message)


_ACCESS_REFUSED = 403


def _is_refused_login(exc: BaseException) -> bool:
    """Wrong user/password, or no access to the vhost: retrying at once cannot help."""
    if isinstance(
        exc,
        (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.AuthenticationError,
            pika.exceptions.ProbableAccessDeniedError,
        ),
    ):
        return True
    return (
        isinstance(exc, pika.exceptions.ConnectionClosedByBroker)
        and exc.reply_code == _ACCESS_REFUSED
    )


# What ``translate`` is called for: everything pika and the socket layer raise, never
# BaseException (gevent's GreenletExit and Timeout must pass through untouched).
PIKA_ERRORS: tuple[type[Exception], ...] = (
    pika.exceptions.AMQPError,
    pika.exceptions.ChannelError,
    pika.exceptions.ReentrancyError,
    OSError,
)


def open_channel(
    settings: RabbitSettings, connection_name: str
) -> tuple[pika.BlockingConnection, Any]:
    """A new connection and its one channel. pika's errors escape: callers translate them."""
    connection = pika.BlockingConnection(settings.connection_parameters(connection_name))
    try:
        return connection, connection.channel()
    except BaseException:
        close_quietly(connection)
        raise


def declare(channel: Any, settings: RabbitSettings, queue_name: str) -> int:
    """Declare ``queue_name`` durable with the configured arguments; returns its ready count.

    Idempotent on the broker; RabbitMQ refuses it (PRECONDITION_FAILED, the channel closes)
    when the queue exists with other arguments.
    """
    frame = channel.queue_declare(
        queue=queue_name, durable=True, arguments=settings.arguments_for(queue_name) or None
    )
    return int(frame.method.message_count)


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be broken; the broker requeues its unacked messages."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except PIKA_ERRORS:
        pass  # already gone: the broker sees the socket close, which has the same effect

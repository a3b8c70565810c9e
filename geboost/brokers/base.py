"""The broker seam: the ``Broker`` and ``Receiver`` protocols and the broker registry.

A broker is a factory of receivers plus a few queue-wide operations. A receiver owns ONE
connection and is used by ONE greenlet only (the puller that opened it): worker greenlets never
touch it, their acknowledgements travel back to the puller, which hands them to the receiver in
batches. That rule is what makes pika safe, and it lets every broker batch its round trips.

Delivery contract (at-least-once), which ``tests/contract`` checks for every broker:

- ``fetch`` hands out each message to one receiver at a time; a message stays held (invisible to
  other receivers) until that receiver acks or requeues it, or until the receiver's connection or
  process dies, after which the broker makes it available again.
- ``ack`` removes messages for good; ``requeue`` makes them available again at once.
- ``close`` requeues what the receiver still holds, then closes the connection.
- After a ``BrokerConnectionError``, ``reconnect`` opens a new connection. Deliveries fetched
  before may still be passed to ``ack``/``requeue``: a broker that can no longer settle them
  (for example a RabbitMQ delivery tag of a closed channel) ignores them, because the broker has
  already made them available again.

Every method translates the driver's exceptions: connection trouble raises
``BrokerConnectionError``, nothing else escapes the broker module untranslated.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from geboost.errors import ConfigurationError, UnknownBrokerError

__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerFactory",
    "Delivery",
    "Receiver",
    "TimedBroker",
    "available_broker_kinds",
    "dead_letter_queue",
    "get_broker_factory",
    "is_dead_letter_queue",
    "mask_url",
    "parse_transport_options",
    "register_broker",
]

ENTRY_POINT_GROUP = "geboost.brokers"


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the broker is and how to talk to it.

    ``broker_url``: empty means the broker's local default (``localhost:6379`` for Redis,
    ``localhost:5672`` with guest/guest for RabbitMQ; for the memory broker it names an
    in-process namespace). ``broker_transport_options``: broker-specific settings, listed in the
    README per broker; a key the broker does not know is a ``ConfigurationError`` naming it.
    """

    broker_url: str = ""
    broker_transport_options: dict[str, Any] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:
        # Never print a password: reprs end up in logs and tracebacks.
        return (
            f"BrokerConfig(broker_url={mask_url(self.broker_url)!r}, "
            f"broker_transport_options={self.broker_transport_options!r})"
        )

    def __post_init__(self) -> None:
        if not isinstance(self.broker_url, str):
            raise ConfigurationError(
                f"BrokerConfig.broker_url must be a str, got {self.broker_url!r}"
            )
        if not isinstance(self.broker_transport_options, Mapping):
            raise ConfigurationError(
                "BrokerConfig.broker_transport_options must be a dict, "
                f"got {self.broker_transport_options!r}"
            )


DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_queue(queue_name: str) -> str:
    """The one name of ``queue_name``'s dead-letter queue (``<queue>.dlq``)."""
    return queue_name + DEAD_LETTER_SUFFIX


def is_dead_letter_queue(queue_name: str) -> bool:
    return queue_name.endswith(DEAD_LETTER_SUFFIX)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``redis://:secret@h`` -> ``redis://:***@h``)."""
    return _PASSWORD_IN_URL.sub(r"\1***@", url)


_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")


class Delivery:
    """One message held by a receiver: its raw body plus the broker's handle to settle it.

    ``handle`` is opaque to the engine (a Redis list value, a RabbitMQ delivery tag with its
    channel, ...). Plain slots class rather than a Struct: it is created once per message on the
    hot path and never encoded.
    """

    __slots__ = ("body", "handle")

    def __init__(self, body: bytes, handle: Any = None) -> None:
        self.body = body
        self.handle = handle

    def __repr__(self) -> str:
        return f"Delivery(body={self.body[:60]!r}, handle={self.handle!r})"


@runtime_checkable
class Receiver(Protocol):
    """One connection pulling from one queue, used by exactly one greenlet.

    A receiver may also set a class attribute ``round_trip_fetch = True`` (not part of the
    protocol: absent means False) when its ``fetch`` is one request and one reply, nothing
    arriving between fetches, as Redis's is: its owner then fetches at most half the pool at a
    time (calls run while the next batch is on its way) and, while its calls run, waits for
    them between fetches itself rather than in ``fetch`` (see ``geboost.puller``). Such a
    receiver may also offer ``send_ahead(count)``: send a take now whose batch a later
    ``fetch(count, ...)`` hands out, oldest first (Redis's; the owner holds its slots).
    """

    def fetch(self, max_count: int, timeout_s: float) -> Sequence[Delivery]:
        """Take up to ``max_count`` (>= 1) messages, waiting at most ``timeout_s`` for the first.

        Returns an empty sequence on timeout. Raises ``BrokerConnectionError``.
        """
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle finished messages for good (one batched round trip where possible).

        A broker may send the acks with its next ``fetch`` or ``keepalive`` rather than at once
        (Redis does: one round trip for both); the owner calls one of them in its next step,
        and ``close`` sends what is left.
        """
        ...

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give messages back so that any receiver can take them at once."""
        ...

    def keepalive(self) -> None:
        """Let the connection do its housekeeping (heartbeats) without taking messages.

        Called by the owner at least every few hundred milliseconds while it does not fetch.
        Must not block for long. Raises ``BrokerConnectionError``.
        """
        ...

    def reconnect(self) -> None:
        """Drop the current connection (if any) and open a new one.

        Raises ``BrokerConnectionError`` when the broker is still unreachable.
        """
        ...

    def close(self) -> None:
        """Requeue what is still held, close the connection. Never raises."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Queue-wide operations and the factory of receivers. Safe to call from any greenlet.

    A broker is created without connecting; connections open on first use.
    """

    def publish(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        """Append messages to the queue; returns only once the broker accepted all of them.

        Raises ``BrokerConnectionError`` (after dropping the broken connection, so the next
        call reconnects). Does not retry by itself: the booster owns the retry policy.
        """
        ...

    def open_receiver(self, queue_name: str, *, window: int = 100) -> Receiver:
        """A new receiver for ``queue_name``; it connects on its first ``fetch``/``reconnect``.

        ``window`` is how many messages the owner can start soon: the engine passes
        ``ceil(1.25 * concurrent_num / conn_num)``, its share of the pool plus a quarter. A
        broker that pushes messages ahead of ``fetch`` (RabbitMQ's prefetch) sizes its window
        from it unless configured otherwise; brokers that only hand out what ``fetch`` asks
        for may ignore it.
        """
        ...

    def count(self, queue_name: str) -> int:
        """Messages waiting (not held by any receiver)."""
        ...

    def in_flight(self, queue_name: str) -> int | None:
        """Messages held by receivers and not yet settled, or None if the broker cannot tell."""
        ...

    def purge(self, queue_name: str) -> int:
        """Delete the waiting messages; returns how many."""
        ...

    def close(self) -> None:
        """Close the broker's own connections (not the receivers'). Never raises."""
        ...


@runtime_checkable
class TimedBroker(Protocol):
    """What a broker adds to take delayed and prioritised messages (``push_with`` with
    ``countdown_s``, ``eta`` or ``priority``). Optional: a broker without ``publish_timed``
    still takes plain pushes, and ``push_with`` refuses those options for it with a
    ``ConfigurationError`` naming the broker kind (nothing is sent).
    """

    def publish_timed(
        self, queue_name: str, bodies: Sequence[bytes], *, delay_s: float, priority: int
    ) -> None:
        """Like ``publish``, but no receiver gets the messages before ``delay_s`` from now,
        and among available messages higher ``priority`` (0..9) is handed out first.

        While they wait, the messages live in the broker (never in a worker's memory) and
        survive any worker's death. A consumer may get a message slightly early (the engine
        holds it until the ``due_time`` in its envelope) but never loses one.
        """
        ...

    def delayed_count(self, queue_name: str) -> int | None:
        """How many of the waiting messages (``count``) are delayed, not due yet; None if the
        broker cannot tell."""
        ...


BrokerFactory = Callable[[BrokerConfig], Broker]
"""Builds a broker from its config WITHOUT connecting; raises ``ConfigurationError``."""

_lock = threading.Lock()
_factories: dict[str, BrokerFactory | str] = {
    # Built-ins are named lazily ("module:attribute") so that importing geboost does not import
    # redis-py or pika until a booster actually uses them.
    "memory": "geboost.brokers.memory:MemoryBroker",
    "redis": "geboost.brokers.redis:RedisBroker",
    "rabbitmq": "geboost.brokers.rabbitmq:RabbitMQBroker",
}
_entry_points_loaded = False


def register_broker(kind: str, factory: BrokerFactory | str) -> None:
    """Make ``broker_kind=kind`` build brokers with ``factory``.

    ``factory`` is a callable taking a ``BrokerConfig``, or a ``"module:attribute"`` string
    naming one (imported on first use). Registering an existing kind replaces it.
    """
    if not isinstance(kind, str) or not kind.strip():
        raise ConfigurationError(f"broker kind must be a non-empty str, got {kind!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ConfigurationError(
            f"broker factory for {kind!r} must be callable or 'module:attribute', got {factory!r}"
        )
    with _lock:
        _factories[_normalise(kind)] = factory


def available_broker_kinds() -> list[str]:
    _load_entry_points()
    with _lock:
        return sorted(_factories)


def get_broker_factory(kind: str) -> BrokerFactory:
    """The factory registered for ``kind``; raises ``UnknownBrokerError`` naming the choices."""
    _load_entry_points()
    key = _normalise(kind)
    with _lock:
        factory = _factories.get(key)
    if factory is None:
        raise UnknownBrokerError(
            f"broker_kind {kind!r} is not registered; known kinds: {available_broker_kinds()}"
        )
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        try:
            loaded: BrokerFactory = getattr(import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise UnknownBrokerError(
                f"broker_kind {kind!r}: cannot load its factory {factory!r}: {exc}"
            ) from exc
        with _lock:
            _factories[key] = loaded
        return loaded
    return factory


def is_registered(kind: str) -> bool:
    _load_entry_points()
    with _lock:
        return _normalise(kind) in _factories


_OptionsT = TypeVar("_OptionsT", bound=msgspec.Struct)
_TYPE_NAMES = {"float": "a number", "int": "an int", "bool": "a bool", "str": "a str"}
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_WRONG_TYPE = re.compile(r"Expected `(?P<expected>[^`]*)`, got `[^`]*` - at `\$\.(?P<name>[^`]*)`")


def parse_transport_options(
    kind: str, options: Mapping[str, Any], settings_type: type[_OptionsT]
) -> _OptionsT:
    """``options`` as ``settings_type`` (a Struct with ``forbid_unknown_fields=True``), strictly
    typed (a bool is not an int, a str not a number). ``ConfigurationError`` names the option.

    Every broker parses its ``broker_transport_options`` here, so unknown keys and wrong types
    are refused the same way everywhere. ``msgspec.convert`` builds new containers, so a dict
    the caller changes later does not change the parsed options.
    """
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{kind} transport options must be a dict, got {options!r}")
    try:
        return msgspec.convert(dict(options), settings_type)
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown, wrong = _UNKNOWN.fullmatch(text), _WRONG_TYPE.fullmatch(text)
        if unknown:
            known = sorted(settings_type.__struct_fields__)
            text = f"unknown {kind} transport option {unknown['name']!r}; known options: {known}"
        elif wrong:
            name, expected = wrong["name"], wrong["expected"]
            expected = _TYPE_NAMES.get(expected, f"of type {expected}")
            text = f"{kind} transport option {name!r} must be {expected}, got {options.get(name)!r}"
        elif "transport option" not in text:  # not __post_init__'s, which names the option
            text = f"{kind} transport options: {text}"
        raise ConfigurationError(text) from None


def _normalise(kind: str) -> str:
    # BrokerKind is a str Enum; its value is the registry key.
    return str(getattr(kind, "value", kind)).strip().lower()


def _load_entry_points() -> None:
    """Register third-party brokers advertised under the ``geboost.brokers`` entry point group.

    Entry points are loaded lazily (``module:attribute`` strings), so a broken plug-in only
    fails the booster that asks for it.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        with _lock:
            _factories.setdefault(_normalise(ep.name), ep.value)

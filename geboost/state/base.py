"""``StateStore``: the small protocol every shared-state feature goes through.

A store holds byte values under string keys, each with an optional time to live, and carries
notifications (a token on a channel) to the processes that watch for them. Results, task status,
pause flags and dedupe marks are built on these few methods; the fleet rate limit on an atomic
booking of start slots (``book_slots``), the worker registry on members with a time to live
(``put_member``, ``remove_member``, ``members``). Both stores implement every method.

``open_state_store`` picks the store for a booster (see its docstring); stores are shared by
the boosters of a process that name the same place, and building one never connects.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from gevent.event import Event

from geboost.brokers.base import BrokerConfig
from geboost.errors import ConfigurationError

__all__ = ["EventWatch", "StateStore", "Watch", "open_state_store"]


class Watch(Protocol):
    """A registration for one token on one channel, made before the watcher reads the state it
    waits on (so a notification sent in between is not missed)."""

    def wait(self, timeout_s: float | None) -> bool:
        """Block until the token was notified (True) or ``timeout_s`` passed (False). A True
        may also mean "look again" (the store lost its notification connection meanwhile)."""
        ...


class EventWatch:
    """The ``Watch`` both stores hand out: a gevent Event that the store sets on notification."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def wait(self, timeout_s: float | None) -> bool:
        got = bool(self.event.wait(timeout_s))
        self.event.clear()
        return got


class StateStore(Protocol):
    """Byte values under string keys, TTLs in seconds (0 = none), and notifications.

    Every method raises ``StateStoreError`` when the store fails (never a driver error).
    """

    def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""
        ...

    def set(self, key: str, value: bytes, *, ttl_s: float = 0.0) -> None: ...

    def set_if_absent(self, key: str, value: bytes, *, ttl_s: float = 0.0) -> bool:
        """Set only if absent (a claim); True if this call set it."""
        ...

    def delete(self, key: str) -> bool:
        """True if the key existed."""
        ...

    def write_batch(
        self, sets: Sequence[tuple[str, bytes, float]], notices: Sequence[tuple[str, str]]
    ) -> None:
        """Many ``(key, value, ttl_s)`` sets then ``(channel, token)`` notifications, in that
        order, in one round trip."""
        ...

    def watch(self, channel: str, token: str) -> AbstractContextManager[Watch]:
        """Register for ``token`` on ``channel`` for the duration of the block. Any number of
        watchers share a bounded number of connections."""
        ...

    def book_slots(self, key: str, *, interval_s: float, count: int) -> float:
        """Book ``count`` start slots ``interval_s`` apart on the schedule at ``key``, shared by
        every process using the store, in one atomic step (one round trip); return the seconds
        from now until the first one (0 when the schedule is free). A schedule in the past
        restarts from now (idle time earns no credit); the key expires about a second after
        its last booked slot."""
        ...

    def put_member(self, registry: str, member: str, info: bytes, *, ttl_s: float) -> None:
        """Add ``member`` with ``info`` to the registry at key ``registry``, or refresh it, for
        ``ttl_s`` seconds from now. Members past their time are pruned on every call."""
        ...

    def remove_member(self, registry: str, member: str) -> bool:
        """Remove ``member`` from the registry; True if it was there."""
        ...

    def members(self, registry: str) -> dict[str, bytes]:
        """The registry's live members and their info."""
        ...

    def close(self) -> None: ...


_lock = threading.Lock()
_stores: dict[tuple[str, str], StateStore] = {}


def open_state_store(
    state_url: str, *, broker_kind: str, broker_config: BrokerConfig
) -> StateStore | None:
    """The store a booster uses, or None when it has none.

    - ``state_url`` ``memory://<name>``: in process, one store per name (tests, one process).
    - ``state_url`` set otherwise: Redis at that URL (``redis://``, ``rediss://``, ``unix://``,
      ``host:port``); when it is the broker's own URL, the broker's transport options (TLS,
      timeouts) apply, else the defaults.
    - empty, ``broker_kind`` REDIS: the broker's own Redis, with its URL and transport options.
    - empty, MEMORY: in process, one store per memory namespace (``broker_url``), the same as
      ``memory://<broker_url>``.
    - empty, any other kind: None (features that need a store are refused).

    Boosters of a process naming the same place share one store object (one pool, one
    notification listener). Never connects.
    """
    kind = str(broker_kind)
    if state_url.startswith("memory://"):
        from geboost.state.memory import MemoryStateStore

        return _shared(("memory", state_url[len("memory://") :]), MemoryStateStore)
    if state_url:
        options = dict(broker_config.broker_transport_options) if kind == "redis" else {}
        if state_url.strip() != broker_config.broker_url.strip():
            options = {}
        return _shared(("redis", state_url), lambda: _redis_store(state_url, options))
    if kind == "redis":
        options = dict(broker_config.broker_transport_options)
        url = broker_config.broker_url
        return _shared(("redis", url), lambda: _redis_store(url, options))
    if kind == "memory":
        from geboost.state.memory import MemoryStateStore

        namespace = broker_config.broker_url
        return _shared(("memory", namespace), MemoryStateStore)
    return None


def _shared(identity: tuple[str, str], make: object) -> StateStore:
    assert callable(make)
    with _lock:
        store = _stores.get(identity)
        if store is None:
            store = _stores[identity] = make()
        return store


def _redis_store(url: str, options: dict[str, object]) -> StateStore:
    from geboost.brokers.redis_config import RedisSettings, parse_target
    from geboost.state.redis import RedisStateStore

    try:
        settings = RedisSettings.from_options(dict(options))
        target = parse_target(url, settings, dict(options))
    except ConfigurationError as exc:
        raise ConfigurationError(f"state_url {url!r}: {exc}") from None
    return RedisStateStore(target, settings)

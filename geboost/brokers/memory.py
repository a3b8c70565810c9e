"""The in-process broker: gevent-friendly queues with the same ack/requeue semantics as the
network brokers, so unit tests exercise the real engine without a server.

Queues live in a namespace named by ``broker_url`` (empty = the default namespace) and are shared
by every booster of the process that uses the same namespace and queue name. Nothing survives
the process.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Sequence

import msgspec
from gevent.event import Event

from geboost.brokers.base import BrokerConfig, Delivery, parse_transport_options

__all__ = ["MemoryBroker"]


class _Queue:
    __slots__ = ("held", "not_empty", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[bytes] = deque()
        self.held: dict[int, bytes] = {}
        self.not_empty = Event()


class _NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The memory broker's transport options: none."""


_namespaces: dict[str, dict[str, _Queue]] = {}
_handles = itertools.count(1)


def _queue(namespace: str, name: str) -> _Queue:
    queues = _namespaces.setdefault(namespace, {})
    q = queues.get(name)
    if q is None:
        q = queues[name] = _Queue()
    return q


class MemoryBroker:
    """``BrokerKind.MEMORY``. Takes no transport options."""

    def __init__(self, config: BrokerConfig) -> None:
        parse_transport_options("memory", config.broker_transport_options, _NoOptions)
        self._namespace = config.broker_url

    def publish(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        q = _queue(self._namespace, queue_name)
        q.waiting.extend(bodies)
        if q.waiting:
            q.not_empty.set()

    def open_receiver(self, queue_name: str, *, window: int = 100) -> MemoryReceiver:
        return MemoryReceiver(_queue(self._namespace, queue_name))

    def count(self, queue_name: str) -> int:
        return len(_queue(self._namespace, queue_name).waiting)

    def in_flight(self, queue_name: str) -> int | None:
        return len(_queue(self._namespace, queue_name).held)

    def purge(self, queue_name: str) -> int:
        q = _queue(self._namespace, queue_name)
        n = len(q.waiting)
        q.waiting.clear()
        return n

    def close(self) -> None:
        pass


class MemoryReceiver:
    def __init__(self, queue: _Queue) -> None:
        self._q = queue
        self._mine: set[int] = set()

    def fetch(self, max_count: int, timeout_s: float) -> list[Delivery]:
        q = self._q
        if not q.waiting:
            # Several receivers may wait on the same Event; whoever runs first takes the
            # messages and the others find the deque empty and go back to waiting.
            deadline = time.monotonic() + timeout_s
            while not q.waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                q.not_empty.clear()
                q.not_empty.wait(remaining)
        out: list[Delivery] = []
        while q.waiting and len(out) < max_count:
            body = q.waiting.popleft()
            handle = next(_handles)
            q.held[handle] = body
            self._mine.add(handle)
            out.append(Delivery(body, handle))
        if q.waiting:
            q.not_empty.set()
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if self._q.held.pop(d.handle, None) is not None:
                self._mine.discard(d.handle)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        q = self._q
        for d in reversed(deliveries):
            body = q.held.pop(d.handle, None)
            if body is not None:
                self._mine.discard(d.handle)
                q.waiting.appendleft(body)
        if q.waiting:
            q.not_empty.set()

    def keepalive(self) -> None:
        pass

    def reconnect(self) -> None:
        pass

    def close(self) -> None:
        held = [Delivery(self._q.held[h], h) for h in sorted(self._mine) if h in self._q.held]
        self.requeue(held)
        self._mine.clear()

"""The in-process broker: gevent-friendly queues with the same ack/requeue semantics as the
network brokers, so unit tests exercise the real engine without a server.

Queues live in a namespace named by ``broker_url`` (empty = the default namespace) and are shared
by every booster of the process that uses the same namespace and queue name. Nothing survives
the process.

Priorities: one FIFO lane per level (0..9), taken highest first. Delayed messages wait in a
heap ordered by due time and move to their lane when a receiver looks at the queue (every fetch,
and a waiting fetch wakes at the next due time). A message given back goes to the front of its
own lane.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence

import msgspec
from gevent.event import Event

from geboost.brokers.base import BrokerConfig, Delivery, parse_transport_options

__all__ = ["MemoryBroker"]


class _Queue:
    __slots__ = ("delayed", "held", "lanes", "not_empty")

    def __init__(self) -> None:
        self.lanes: list[deque[bytes]] = [deque() for _ in range(10)]  # index = priority
        self.delayed: list[tuple[float, int, int, bytes]] = []  # (due, order, priority, body)
        self.held: dict[int, tuple[bytes, int]] = {}  # handle -> (body, priority)
        self.not_empty = Event()

    def ready_count(self) -> int:
        return sum(map(len, self.lanes))

    def promote(self) -> float | None:
        """Move due delayed messages to their lanes; when the next one is due, or None."""
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, priority, body = heapq.heappop(self.delayed)
            self.lanes[priority].append(body)
        return self.delayed[0][0] if self.delayed else None

    def take(self) -> tuple[bytes, int] | None:
        for priority in range(9, -1, -1):
            lane = self.lanes[priority]
            if lane:
                return lane.popleft(), priority
        return None


class _NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The memory broker's transport options: none."""


_namespaces: dict[str, dict[str, _Queue]] = {}
_handles = itertools.count(1)
_order = itertools.count()


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
        q.lanes[0].extend(bodies)
        if bodies:
            q.not_empty.set()

    def publish_timed(
        self, queue_name: str, bodies: Sequence[bytes], *, delay_s: float, priority: int
    ) -> None:
        q = _queue(self._namespace, queue_name)
        if delay_s <= 0:
            q.lanes[priority].extend(bodies)
        else:
            due = time.monotonic() + delay_s
            for body in bodies:
                heapq.heappush(q.delayed, (due, next(_order), priority, body))
        if bodies:
            q.not_empty.set()  # a waiting fetch recomputes how long to wait

    def open_receiver(self, queue_name: str, *, window: int = 100) -> MemoryReceiver:
        return MemoryReceiver(_queue(self._namespace, queue_name))

    def count(self, queue_name: str) -> int:
        """Messages waiting, delayed ones included."""
        q = _queue(self._namespace, queue_name)
        return q.ready_count() + len(q.delayed)

    def delayed_count(self, queue_name: str) -> int | None:
        return len(_queue(self._namespace, queue_name).delayed)

    def in_flight(self, queue_name: str) -> int | None:
        return len(_queue(self._namespace, queue_name).held)

    def purge(self, queue_name: str) -> int:
        q = _queue(self._namespace, queue_name)
        n = self.count(queue_name)
        for lane in q.lanes:
            lane.clear()
        q.delayed.clear()
        return n

    def close(self) -> None:
        pass


class MemoryReceiver:
    def __init__(self, queue: _Queue) -> None:
        self._q = queue
        self._mine: set[int] = set()

    def fetch(self, max_count: int, timeout_s: float) -> list[Delivery]:
        q = self._q
        next_due = q.promote()
        if not q.ready_count():
            # Several receivers may wait on the same Event; whoever runs first takes the
            # messages and the others find the lanes empty and go back to waiting.
            deadline = time.monotonic() + timeout_s
            while not q.ready_count():
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    return []
                if next_due is not None:
                    remaining = min(remaining, max(0.0, next_due - now))
                q.not_empty.clear()
                q.not_empty.wait(remaining)
                next_due = q.promote()
        out: list[Delivery] = []
        while len(out) < max_count and (got := q.take()) is not None:
            handle = next(_handles)
            q.held[handle] = got
            self._mine.add(handle)
            out.append(Delivery(got[0], handle))
        if q.ready_count():
            q.not_empty.set()
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if self._q.held.pop(d.handle, None) is not None:
                self._mine.discard(d.handle)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        q = self._q
        for d in reversed(deliveries):
            got = q.held.pop(d.handle, None)
            if got is not None:
                self._mine.discard(d.handle)
                q.lanes[got[1]].appendleft(got[0])
        if q.ready_count():
            q.not_empty.set()

    def keepalive(self) -> None:
        pass

    def reconnect(self) -> None:
        pass

    def close(self) -> None:
        held = [Delivery(self._q.held[h][0], h) for h in sorted(self._mine) if h in self._q.held]
        self.requeue(held)
        self._mine.clear()

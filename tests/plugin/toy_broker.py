"""A toy third-party broker, written outside the geboost package against the public protocol
only: it shows that a new queue plugs in without touching the core."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import gevent

from geboost import BrokerConfig, ConfigurationError, Delivery

_queues: dict[str, deque[bytes]] = {}
_held: dict[int, tuple[str, bytes]] = {}
_next = [0]


class ToyBroker:
    def __init__(self, config: BrokerConfig) -> None:
        unknown = set(config.broker_transport_options) - {"greeting"}
        if unknown:
            raise ConfigurationError(f"unknown toy transport option {sorted(unknown)[0]!r}")

    def publish(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        _queues.setdefault(queue_name, deque()).extend(bodies)

    def open_receiver(self, queue_name: str, *, window: int = 100) -> ToyReceiver:
        return ToyReceiver(queue_name)

    def count(self, queue_name: str) -> int:
        return len(_queues.get(queue_name, ()))

    def in_flight(self, queue_name: str) -> int | None:
        return sum(1 for q, _ in _held.values() if q == queue_name)

    def purge(self, queue_name: str) -> int:
        n = self.count(queue_name)
        _queues.pop(queue_name, None)
        return n

    def close(self) -> None:
        pass


class ToyReceiver:
    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name

    def fetch(self, max_count: int, timeout_s: float) -> list[Delivery]:
        q = _queues.setdefault(self.queue_name, deque())
        waited = 0.0
        while not q and waited < timeout_s:
            gevent.sleep(0.01)  # a toy polls; real brokers block on the server
            waited += 0.01
        out = []
        while q and len(out) < max_count:
            _next[0] += 1
            body = q.popleft()
            _held[_next[0]] = (self.queue_name, body)
            out.append(Delivery(body, _next[0]))
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            _held.pop(d.handle, None)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            item = _held.pop(d.handle, None)
            if item is not None:
                _queues.setdefault(item[0], deque()).appendleft(item[1])

    def keepalive(self) -> None:
        pass

    def reconnect(self) -> None:
        pass

    def close(self) -> None:
        mine = [Delivery(b, h) for h, (q, b) in _held.items() if q == self.queue_name]
        self.requeue(mine)

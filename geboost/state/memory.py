"""The in-process state store: a dict with expiry times, and gevent Events for notifications.

One store per memory namespace (the memory broker's ``broker_url``), shared by the boosters of
the process that use it; nothing survives the process. Expired keys are dropped when read, and
on every write those past their time are taken off a heap of expiry times, so keys written per
task cannot pile up. (A scan of every key each 1,000 writes did the same, but with the 200,000
results of a burst alive it took most of a results-on worker's time.)
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from gevent.event import Event

from geboost.state.base import EventWatch

__all__ = ["MemoryStateStore"]

_SWEEP_EVERY = 1000  # writes between sweeps of the (few) schedule keys
_NEVER = float("inf")


class MemoryStateStore:
    """See the module docstring. Never fails, never blocks except in ``Watch.wait``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # for expiries and schedules; a test passes its own
        self._values: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires at or inf)
        # (expires at, key) for every write with a TTL; an entry whose key was written again
        # since (another expiry) is stale and skipped when it comes up.
        self._expiries: list[tuple[float, str]] = []
        self._watchers: dict[tuple[str, str], list[Event]] = {}
        self._writes = 0
        self._next_start: dict[str, float] = {}  # schedule key -> next free start (monotonic)
        self._registries: dict[str, dict[str, tuple[bytes, float]]] = {}  # -> (info, expires)

    def __repr__(self) -> str:
        return f"MemoryStateStore({len(self._values)} keys)"

    def get(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._values[key]
            return None
        return item[0]

    def set(self, key: str, value: bytes, *, ttl_s: float = 0.0) -> None:
        self._set_all([(key, value, ttl_s)])

    def _set_all(self, sets: Sequence[tuple[str, bytes, float]]) -> None:
        now = self._clock()
        values, expiries = self._values, self._expiries
        for key, value, ttl_s in sets:
            if ttl_s > 0:
                expires = now + ttl_s
                heapq.heappush(expiries, (expires, key))
            else:
                expires = _NEVER
            values[key] = (value, expires)
        while expiries and expiries[0][0] <= now:
            expired, old = heapq.heappop(expiries)
            item = values.get(old)
            if item is not None and item[1] == expired:
                del values[old]
        before, self._writes = self._writes, self._writes + len(sets)
        if before // _SWEEP_EVERY != self._writes // _SWEEP_EVERY:
            self._sweep()

    def set_if_absent(self, key: str, value: bytes, *, ttl_s: float = 0.0) -> bool:
        if self.get(key) is not None:
            return False
        self.set(key, value, ttl_s=ttl_s)
        return True

    def delete(self, key: str) -> bool:
        return self._values.pop(key, None) is not None

    def write_batch(
        self, sets: Sequence[tuple[str, bytes, float]], notices: Sequence[tuple[str, str]]
    ) -> None:
        if sets:
            self._set_all(sets)
        for channel, token in notices:
            for event in self._watchers.get((channel, token), ()):
                event.set()

    @contextmanager
    def watch(self, channel: str, token: str) -> Iterator[EventWatch]:
        event = Event()
        events = self._watchers.setdefault((channel, token), [])
        events.append(event)
        try:
            yield EventWatch(event)
        finally:
            events.remove(event)
            if not events:
                del self._watchers[(channel, token)]

    def book_slots(self, key: str, *, interval_s: float, count: int) -> float:
        now = self._clock()
        first = max(self._next_start.get(key, now), now)  # idle time earns no credit
        self._next_start[key] = first + interval_s * count
        return first - now

    def put_member(self, registry: str, member: str, info: bytes, *, ttl_s: float) -> None:
        live = self._live(registry)
        live[member] = (info, self._clock() + ttl_s)
        self._registries[registry] = live

    def remove_member(self, registry: str, member: str) -> bool:
        live = self._live(registry)
        found = live.pop(member, None) is not None
        if not live:
            self._registries.pop(registry, None)
        return found

    def members(self, registry: str) -> dict[str, bytes]:
        return {member: info for member, (info, _) in self._live(registry).items()}

    def _live(self, registry: str) -> dict[str, tuple[bytes, float]]:
        """The registry without its members past their time (dropped here, so none piles up)."""
        now = self._clock()
        live = {m: item for m, item in self._registries.get(registry, {}).items() if item[1] > now}
        if live:
            self._registries[registry] = live
        else:
            self._registries.pop(registry, None)
        return live

    def close(self) -> None:
        pass  # shared by the boosters of the namespace; nothing to release

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, start in self._next_start.items() if start + 1.0 <= now]:
            del self._next_start[key]

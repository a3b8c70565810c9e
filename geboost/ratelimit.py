"""Pacing call starts to ``qps_limit``: ``LeakyBucket`` for one process (``qps_scope=
"process"``) and ``FleetBucket``, its twin on the state store, for every process consuming a
queue (``qps_scope="queue"``). Both hand out evenly spaced start times; ``reserve`` returns how
long to wait for the next one."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from gevent.lock import Semaphore

from geboost.errors import StateStoreError
from geboost.log import QueueLogger
from geboost.state.base import StateStore

__all__ = ["FLEET_BATCH_S", "FleetBucket", "LeakyBucket", "StartPacer"]

FLEET_BATCH_S = 0.2
"""A fleet worker books this much of the rate at once (at least one slot)."""


class StartPacer(Protocol):
    """What the pullers ask before each start."""

    @property
    def unlimited(self) -> bool: ...

    def reserve(self) -> float | None:
        """Book the next start slot; the seconds to wait until it, or None when no slot could
        be booked now (the store failed: ask again later, start nothing meanwhile)."""
        ...


class LeakyBucket:
    """Hands out evenly spaced start times, ``1 / qps`` seconds apart.

    Each ``reserve()`` books the next free slot on an absolute schedule and returns how long the
    caller must wait for it, so rounding errors of individual sleeps never accumulate and the
    long-run rate is exact. An idle period earns no credit: the schedule restarts from "now",
    so there is never a burst after a pause. Greenlets are cooperative and ``reserve`` does not
    yield, so no lock is needed between the pullers sharing one bucket.
    """

    __slots__ = ("_interval_s", "_next_start")

    def __init__(self, qps_limit: float) -> None:
        self._interval_s = 1.0 / qps_limit if qps_limit > 0 else 0.0
        self._next_start = 0.0

    @property
    def unlimited(self) -> bool:
        return self._interval_s == 0.0

    def reserve(self) -> float:
        """Book the next start slot; returns the seconds to wait until it (0 if unlimited)."""
        if self._interval_s == 0.0:
            return 0.0
        now = time.monotonic()
        start = self._next_start if self._next_start > now else now
        self._next_start = start + self._interval_s
        return start - now


class FleetBucket:
    """The leaky bucket of a whole fleet: one schedule in the state store, at ``key``.

    Slots are booked ``batch`` at a time (``FLEET_BATCH_S`` of the rate, at least one) by one
    atomic store call (``StateStore.book_slots``: one round trip per batch, not per call), and
    handed out locally, in order. The store's schedule restarts from its own "now" when idle,
    so idle time earns no credit anywhere in the fleet.

    Accuracy: slots are never used early, so the fleet never starts more than the rate plus
    one slot per second, whoever joins or leaves. A slot that one worker booked and did not use
    is wasted, never given back: a worker that stops or runs out of messages leaves at most
    ``batch`` slots unused (the fleet then runs below the limit for up to ``FLEET_BATCH_S``).
    A slot found more than one interval in the past (its worker had nothing to start at that
    time) is dropped rather than used late, so that late starts cannot pile up on top of other
    workers' slots. With many workers the schedule may be booked up to ``workers *
    FLEET_BATCH_S`` ahead; each worker then waits its turn.
    """

    def __init__(
        self,
        store: StateStore,
        key: str,
        qps_limit: float,
        log: QueueLogger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if qps_limit <= 0:
            raise ValueError("a fleet bucket needs qps_limit > 0")
        self._store = store
        self._key = key
        self._interval_s = 1.0 / qps_limit
        self.batch = max(1, int(qps_limit * FLEET_BATCH_S))
        self._log = log
        self._clock = clock
        self._slots: deque[float] = deque()  # booked start times, on ``clock``
        self._booking = Semaphore()  # one booking at a time among the pullers
        self._failing = False
        self.wasted = 0  # booked slots dropped unused (stale)

    @property
    def unlimited(self) -> bool:
        return False

    def reserve(self) -> float | None:
        with self._booking:
            now = self._clock()
            while self._slots and self._slots[0] < now - self._interval_s:
                self._slots.popleft()
                self.wasted += 1
            if not self._slots and not self._book():
                return None
            return max(0.0, self._slots.popleft() - self._clock())

    def _book(self) -> bool:
        try:
            first_s = self._store.book_slots(
                self._key, interval_s=self._interval_s, count=self.batch
            )
        except StateStoreError as exc:
            if not self._failing:
                self._log.warning("could not book start slots: {}; no call starts until then", exc)
            self._failing = True
            return False
        if self._failing:
            self._log.info("start slots booked again")
            self._failing = False
        # Counted from the reply: never earlier than the store meant (one round trip late).
        first = self._clock() + first_s
        self._slots.extend(first + i * self._interval_s for i in range(self.batch))
        return True

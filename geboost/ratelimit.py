"""The greenlet-aware leaky bucket that paces call starts to ``qps_limit``."""

from __future__ import annotations

import time

__all__ = ["LeakyBucket"]


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

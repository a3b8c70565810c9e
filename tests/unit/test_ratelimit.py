from __future__ import annotations

import pytest

from geboost import ratelimit
from geboost.ratelimit import LeakyBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(ratelimit.time, "monotonic", c)
    return c


def test_unlimited_never_waits(clock: FakeClock) -> None:
    b = LeakyBucket(0)
    assert b.unlimited
    assert [b.reserve() for _ in range(5)] == [0.0] * 5


def test_starts_are_evenly_spaced(clock: FakeClock) -> None:
    b = LeakyBucket(100)
    waits = [b.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])


def test_fractional_rate(clock: FakeClock) -> None:
    b = LeakyBucket(0.5)
    assert b.reserve() == 0.0
    assert b.reserve() == pytest.approx(2.0)


def test_idle_time_earns_no_burst(clock: FakeClock) -> None:
    b = LeakyBucket(10)
    b.reserve()
    clock.now += 60  # a long pause
    waits = [b.reserve() for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1, 0.2])


def test_schedule_does_not_drift_with_late_callers(clock: FakeClock) -> None:
    b = LeakyBucket(10)
    wakes = []
    for _ in range(100):
        wake = clock.now + b.reserve()
        wakes.append(wake)
        clock.now = wake + 0.003  # every caller wakes 3 ms late
    # Starts stay on the absolute 0.1 s grid: lateness is not added up.
    assert wakes[-1] - wakes[0] == pytest.approx(9.9)

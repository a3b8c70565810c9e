"""stop() while messages keep arriving (issue 8, case 1), on every broker.

Promises: once stop() is called no new call starts; a message goes back only if its call never
started or was interrupted, never while its call still runs; when stop() returns no call of that
booster runs. Checked by a second booster that takes over the queue: every task then finished
exactly once, nothing ran again after it finished, and no two runs of a task overlapped.
"""

from __future__ import annotations

import random
import time
from typing import Any

import gevent
import pytest
from gevent import GreenletExit

from geboost import Booster, BoostOptions, new_booster
from tests.contract.conftest import BrokerSpec
from tests.support import cleanup_queues, wait_for


class _Record:
    """What every call did, per task: ("start" | "finish" | "interrupted", booster tag)."""

    def __init__(self) -> None:
        self.events: dict[int, list[tuple[str, str]]] = {}
        self.running: dict[str, int] = {"A": 0, "B": 0}
        self.started: dict[str, int] = {"A": 0, "B": 0}
        self.started_after_stop: list[int] = []
        self.stop_called = False

    def func(self, tag: str, longest_call_s: float) -> Any:
        def work(i: int) -> None:
            if tag == "A" and self.stop_called:
                self.started_after_stop.append(i)
            self.events.setdefault(i, []).append(("start", tag))
            self.started[tag] += 1
            self.running[tag] += 1
            try:
                gevent.sleep(random.uniform(0.0, longest_call_s))
            except GreenletExit:
                self.events[i].append(("interrupted", tag))
                raise
            finally:
                self.running[tag] -= 1
            self.events[i].append(("finish", tag))

        return work


def _booster(spec: BrokerSpec, queue_name: str, func: Any) -> Booster[..., Any]:
    return new_booster(
        BoostOptions(
            queue_name=queue_name,
            consume_func=func,
            broker_kind=spec.kind,
            broker_config=spec.config,
            conn_num=2,
            concurrent_num=20,
            handle_signals=False,
            reconnect_interval_s=0.2,
        )
    )


def _check(record: _Record, pushed: int) -> None:
    assert record.started_after_stop == []
    assert sorted(record.events) == list(range(pushed))
    for task, events in record.events.items():
        kinds = [kind for kind, _ in events]
        assert kinds.count("finish") == 1, (task, events)
        # Runs never overlap: each start is followed by its own end before the next start.
        assert kinds[-1] == "finish", (task, events)
        for before, after in zip(kinds[::2], kinds[1::2], strict=True):
            assert (before, after) in {("start", "interrupted"), ("start", "finish")}, events


def _round(spec: BrokerSpec, queue_name: str, longest_call_s: float, stop_timeout_s: float) -> None:
    record = _Record()
    pushed = 0
    a = _booster(spec, queue_name, record.func("A", longest_call_s))
    b = _booster(spec, queue_name, record.func("B", longest_call_s))
    try:
        a.consume()

        def produce(seconds: float) -> None:
            nonlocal pushed
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                b.push_many([(pushed + k,) for k in range(5)])  # b only pushes yet
                pushed += 5
                gevent.sleep(0.01)

        producer = gevent.spawn(produce, 1.2)
        # Stop at a random point of the flow: once A started a random number of calls.
        stop_after_starts = random.randint(5, 60)
        assert wait_for(lambda: record.started["A"] >= stop_after_starts, 20)
        record.stop_called = True
        a.stop(timeout_s=stop_timeout_s)
        assert record.running["A"] == 0  # when stop() returns, nothing of A runs
        producer.join(timeout=10)
        assert producer.dead and producer.successful()
        b.consume()
        assert b.wait_until_idle(timeout_s=60)
    finally:
        a.stop(timeout_s=1)
        b.stop(timeout_s=5)
    assert pushed > 0
    _check(record, pushed)


@pytest.mark.parametrize(
    ("longest_call_s", "stop_timeout_s"),
    [
        (0.005, 2.0),  # the pool is often empty when stop() begins, pullers mid-fetch
        (0.3, 0.05),  # calls are interrupted at the timeout and given back
    ],
)
def test_stop_while_messages_arrive_runs_nothing_twice(
    spec: BrokerSpec, broker: Any, queue_name: str, longest_call_s: float, stop_timeout_s: float
) -> None:
    for attempt in range(3):
        _round(spec, f"{queue_name}-{attempt}", longest_call_s, stop_timeout_s)
        cleanup_queues(broker, f"{queue_name}-{attempt}")

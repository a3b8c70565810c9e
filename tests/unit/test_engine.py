"""The engine's promises on the memory broker: concurrency, pacing, retries, robustness, stop."""

from __future__ import annotations

import itertools
import time
from typing import Any

import gevent
import pytest

from geboost import Booster, BrokerConnectionError
from tests.support import memory_booster, wait_for


@pytest.fixture
def boosters() -> Any:
    made: list[Booster[Any, Any]] = []
    yield made
    for b in made:
        b.stop(timeout_s=2)


def test_pool_runs_exactly_concurrent_num_at_once(boosters: list[Any]) -> None:
    running = {"now": 0, "peak": 0}

    def slow(i: int) -> None:
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        gevent.sleep(0.05)
        running["now"] -= 1

    b = memory_booster(slow, conn_num=3, concurrent_num=7)
    boosters.append(b)
    b.push_many([(i,) for i in range(60)])
    b.consume()
    assert b.wait_until_idle(timeout_s=20)
    assert running["peak"] == 7


def test_consume_twice_starts_one_set_of_pullers(boosters: list[Any]) -> None:
    b = memory_booster(print, conn_num=2)
    boosters.append(b)
    b.consume()
    engine = b._engine
    b.consume()
    assert b._engine is engine
    assert engine is not None and len(engine._puller_greenlets) == 2


def test_qps_limit_paces_starts_without_bursts(boosters: list[Any]) -> None:
    starts: list[float] = []
    b = memory_booster(lambda i: starts.append(time.monotonic()), qps_limit=20, conn_num=2)
    boosters.append(b)
    b.push_many([(i,) for i in range(15)])
    b.consume()
    assert wait_for(lambda: len(starts) == 15, 20)
    # 15 starts at 20/s: no 100 ms window may hold more than its share (2) plus one.
    for t in starts:
        assert sum(1 for s in starts if t <= s < t + 0.1) <= 3
    assert starts[-1] - starts[0] >= 14 / 20 * 0.9


def test_pulled_but_unstarted_messages_stay_bounded(boosters: list[Any]) -> None:
    gate = gevent.event.Event()
    b = memory_booster(lambda i: gate.wait(), conn_num=2, concurrent_num=5, fetch_batch=3)
    boosters.append(b)
    b.push_many([(i,) for i in range(100)])
    b.consume()
    assert wait_for(lambda: b.message_count() == 95, 5)
    gevent.sleep(0.3)
    assert b.message_count() == 95  # only the 5 the pool can run were taken
    gate.set()
    assert b.wait_until_idle(timeout_s=20)


def test_retries_back_off_exponentially_without_holding_a_slot(boosters: list[Any]) -> None:
    attempts: list[float] = []
    others: list[int] = []

    def fails_twice(i: int) -> None:
        if i == 0:
            attempts.append(time.monotonic())
            if len(attempts) < 3:
                raise RuntimeError("not yet")
        else:
            others.append(i)

    b = memory_booster(fails_twice, concurrent_num=1, retry_backoff_s=0.2, max_retries=3)
    boosters.append(b)
    b.push(0)
    b.push_many([(i,) for i in range(1, 4)])
    b.consume()
    assert wait_for(lambda: len(attempts) == 3, 10)
    assert attempts[1] - attempts[0] >= 0.2 and attempts[2] - attempts[1] >= 0.4
    # The single slot was free while task 0 waited: the others ran in between.
    assert others == [1, 2, 3]
    assert b.wait_until_idle(timeout_s=5)
    assert b.dead_letter_count() == 0


def test_backoff_is_capped(boosters: list[Any]) -> None:
    attempts: list[float] = []

    def always(i: int) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("no")

    b = memory_booster(always, max_retries=4, retry_backoff_s=0.05, retry_backoff_max_s=0.1)
    boosters.append(b)
    b.push(1)
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 1, 10)
    gaps = [b2 - a for a, b2 in itertools.pairwise(attempts)]
    assert len(attempts) == 5 and max(gaps) < 1.0


def test_no_retries_dead_letters_at_once(boosters: list[Any]) -> None:
    calls: list[int] = []

    def boom(i: int) -> None:
        calls.append(i)
        raise KeyError("k")

    b = memory_booster(boom, max_retries=0)
    boosters.append(b)
    b.push(9)
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 1, 10)
    assert calls == [9]
    assert b.dead_letters()[0].error.startswith("KeyError")


@pytest.mark.parametrize(
    "raise_what", [SystemExit(3), KeyboardInterrupt, gevent.Timeout, MemoryError("x")]
)
def test_nothing_the_function_raises_stops_consumption(
    boosters: list[Any], raise_what: Any
) -> None:
    done: list[int] = []

    def nasty(i: int) -> None:
        if i == 0:
            if raise_what is gevent.Timeout:
                raise gevent.Timeout(0.01)
            raise raise_what
        done.append(i)

    b = memory_booster(nasty, max_retries=0, concurrent_num=2)
    boosters.append(b)
    b.push(0)
    b.push_many([(i,) for i in range(1, 20)])
    b.consume()
    assert wait_for(lambda: len(done) == 19 and b.dead_letter_count() == 1, 10)
    engine = b._engine
    assert engine is not None and not any(g.dead for g in engine._puller_greenlets)
    assert wait_for(engine.is_idle, 5)
    b.stop(timeout_s=2)  # pullers hold free slots while they fetch: count them after
    assert engine.slots.counter == 2


def test_task_timeout_interrupts_a_hang_and_frees_the_slot(boosters: list[Any]) -> None:
    done: list[int] = []

    def maybe_hang(i: int) -> None:
        if i == 0:
            gevent.sleep(3600)
        done.append(i)

    b = memory_booster(maybe_hang, concurrent_num=1, task_timeout_s=0.2, max_retries=0)
    boosters.append(b)
    b.push_many([(0,), (1,), (2,)])
    b.consume()
    assert wait_for(lambda: done == [1, 2], 10)
    assert b.dead_letters()[0].error.startswith("Timeout")


def test_arguments_that_do_not_fit_are_dead_lettered_without_retries(
    boosters: list[Any],
) -> None:
    calls: list[int] = []

    def one(x: int) -> None:
        calls.append(x)

    b = memory_booster(one, max_retries=5, retry_backoff_s=5)
    boosters.append(b)
    # A foreign producer writes a call that does not fit the signature.
    b.broker.publish(b.queue_name, [b'{"task_id":"t1","args":[1,2,3]}'])
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 1, 5)
    letter = b.dead_letters()[0]
    # Never called: the arguments are checked against the signature before the call.
    assert calls == [] and letter.attempts == 0 and letter.task_id == "t1"
    assert "too many positional arguments" in letter.error


def test_stop_lets_running_calls_finish_and_returns_unstarted(boosters: list[Any]) -> None:
    finished: list[int] = []

    def slow(i: int) -> None:
        gevent.sleep(0.3)
        finished.append(i)

    b = memory_booster(slow, concurrent_num=2, qps_limit=4)
    b.push_many([(i,) for i in range(10)])
    b.consume()
    assert wait_for(lambda: len(finished) >= 1, 5)
    assert not b.join(timeout_s=0.01)
    b.stop(timeout_s=5)
    assert b.join(timeout_s=1)
    # Everything is either finished or back in the queue: nothing lost, nothing held.
    assert len(finished) + b.message_count() == 10
    assert b.in_flight_count() == 0


def test_stop_timeout_interrupts_calls_and_requeues_them(boosters: list[Any]) -> None:
    started: list[int] = []

    def forever(i: int) -> None:
        started.append(i)
        gevent.sleep(3600)

    b = memory_booster(forever, concurrent_num=3)
    b.push_many([(i,) for i in range(3)])
    b.consume()
    assert wait_for(lambda: len(started) == 3, 5)
    b.stop(timeout_s=0.2)
    assert b.message_count() == 3 and b.in_flight_count() == 0


def test_wait_until_idle_times_out_while_busy(boosters: list[Any]) -> None:
    b = memory_booster(lambda i: gevent.sleep(5))
    boosters.append(b)
    b.push(1)
    b.consume()
    assert b.wait_until_idle(timeout_s=0.3) is False


class _FlakyKeepalive:
    """A memory receiver whose connection breaks once while the puller waits for the limiter."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.broke = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def keepalive(self) -> None:
        if not self.broke:
            self.broke = True
            raise BrokerConnectionError("connection reset while waiting")


def test_connection_lost_while_rate_limited_loses_no_message_and_no_slot(
    boosters: list[Any],
) -> None:
    ran: list[int] = []
    b = memory_booster(ran.append, qps_limit=4, reconnect_interval_s=0.05, concurrent_num=3)
    boosters.append(b)
    opened = b.broker.open_receiver
    b.broker.open_receiver = lambda q, **kw: _FlakyKeepalive(opened(q, **kw))  # type: ignore[method-assign]
    b.push_many([(i,) for i in range(6)])
    b.consume()
    assert b.wait_until_idle(timeout_s=20)
    assert sorted(ran) == list(range(6))
    b.stop(timeout_s=2)
    engine = b._engine
    assert engine is not None and engine.slots.counter == 3 and engine.is_idle()

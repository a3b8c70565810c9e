"""The engine's promises on the memory broker: concurrency, pacing, retries, robustness, stop."""

from __future__ import annotations

import gc
import itertools
import re
import time
import warnings
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
    keepalives: list[int] = []
    opened = b.broker.open_receiver
    b.broker.open_receiver = lambda q, **kw: _Counting(opened(q, **kw), [], keepalives)  # type: ignore[method-assign]
    b.consume()
    assert wait_for(lambda: b.message_count() == 95, 5)
    # Each puller, finding no free slot, services its connection between waits: 4 of those
    # after the pool filled prove both looped and declined to fetch more.
    seen = len(keepalives)
    assert wait_for(lambda: len(keepalives) >= seen + 4, 5)
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
    name = raise_what.__name__ if isinstance(raise_what, type) else type(raise_what).__name__
    assert b.dead_letters()[0].error.startswith(name + ": ")
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
    assert b.dead_letters()[0].error == "TimeoutError: timed out after 0.2 s"


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


class _Counting:
    """A memory receiver that records each fetch and keepalive (proof that a puller looped)."""

    def __init__(self, inner: Any, fetches: list[int], keepalives: list[int] | None = None) -> None:
        self.inner = inner
        self.fetches = fetches
        self.keepalives = keepalives if keepalives is not None else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fetch(self, max_count: int, timeout_s: float) -> Any:
        self.fetches.append(max_count)
        return self.inner.fetch(max_count, timeout_s)

    def keepalive(self) -> None:
        self.keepalives.append(1)
        self.inner.keepalive()


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


# ----------------------------------------------------------------- slots, retry timing, logs
def test_stop_during_retry_waits_and_calls_leaks_no_slot(boosters: list[Any]) -> None:
    """Killed while 2 messages wait for their retry and 3 calls run: every slot comes back,
    and a second ``consume()`` runs 3 calls at once and the given-back retries again."""
    phase = {"second": False}
    running = {"now": 0, "peak": 0}
    first_calls: list[int] = []
    second_calls: list[int] = []
    three_running = gevent.event.Event()

    def task(i: int) -> None:
        if not phase["second"]:
            first_calls.append(i)
            if i < 2:
                raise RuntimeError("fails; its retry is due in 60 s")
            gevent.sleep(3600)  # runs until stop() kills it
        second_calls.append(i)
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        if running["now"] == 3:
            three_running.set()
        three_running.wait(10)  # the first 3 calls wait for each other: peak is exactly 3
        running["now"] -= 1

    b = memory_booster(task, concurrent_num=3, max_retries=1, retry_backoff_s=60)
    boosters.append(b)
    b.push_many([(0,), (1,)])
    b.consume()
    first = b._engine
    assert first is not None
    assert wait_for(lambda: len(first._waiting) == 2, 5)  # both wait for their retry
    b.push_many([(2,), (3,), (4,)])
    assert wait_for(lambda: sorted(first_calls) == [0, 1, 2, 3, 4], 5)
    assert len(first.calls) == 3
    b.stop(timeout_s=0.1)
    assert first.slots.counter == 3  # nothing kept a slot: not the kills, not the retry waits
    assert b.message_count() == 5 and b.in_flight_count() == 0

    phase["second"] = True
    b.push_many([(5,), (6,), (7,)])
    b.consume()
    assert b._engine is not first
    assert b.wait_until_idle(timeout_s=20)
    assert running["peak"] == 3
    assert sorted(second_calls) == list(range(8))  # the given-back retries ran again
    assert b.dead_letter_count() == 0
    b.stop(timeout_s=2)
    assert b._engine.slots.counter == 3


@pytest.mark.parametrize("qps_limit", [0.0, 10.0])
def test_a_retry_starts_on_time_on_an_idle_queue(boosters: list[Any], qps_limit: float) -> None:
    """The retry's due time bounds every fetch, and no puller keeps the free slots reserved
    in a long fetch (the old engine started it ~0.2 s late with poll_timeout_s=1)."""
    attempts: list[float] = []
    failed_at: list[float] = []

    def fails_once() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            failed_at.append(time.monotonic())
            raise RuntimeError("once")

    b = memory_booster(
        fails_once, retry_backoff_s=0.3, concurrent_num=50, max_retries=1, qps_limit=qps_limit
    )
    boosters.append(b)
    b.push()
    b.consume()
    assert wait_for(lambda: len(attempts) == 2, 5)
    late_s = attempts[1] - (failed_at[0] + 0.3)
    # Loose on purpose (a shared, noisy machine): this tests the mechanism, not speed.
    assert -0.01 <= late_s < 0.1, late_s


_WARN_OR_WORSE = re.compile(r"\| (WARNING|ERROR|CRITICAL) *\|")


def test_stop_with_nothing_held_logs_no_warning(log_lines: list[str]) -> None:
    fetches: list[int] = []
    b = memory_booster(print, conn_num=2)
    opened = b.broker.open_receiver
    b.broker.open_receiver = lambda q, **kw: _Counting(opened(q, **kw), fetches)  # type: ignore[method-assign]
    b.consume()
    assert wait_for(lambda: len(fetches) >= 2, 5)  # the pullers are fetching from the queue
    b.stop(timeout_s=2)
    assert any("stopped" in line for line in log_lines)
    assert [line for line in log_lines if _WARN_OR_WORSE.search(line)] == []


def test_a_task_timeout_is_logged_with_its_seconds(
    boosters: list[Any], log_lines: list[str]
) -> None:
    b = memory_booster(lambda: gevent.sleep(3600), task_timeout_s=0.5, max_retries=0)
    boosters.append(b)
    b.push()
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 1, 10)
    assert b.dead_letters()[0].error == "TimeoutError: timed out after 0.5 s"
    assert any("timed out after 0.5 s" in line for line in log_lines)
    assert not any("<Timeout at" in line for line in log_lines)


def test_keyboard_interrupt_in_a_call_fails_that_call_only(boosters: list[Any]) -> None:
    done: list[int] = []

    def interrupted(i: int) -> None:
        if i == 3:
            raise KeyboardInterrupt
        gevent.sleep(0.01)  # the calls overlap with the interrupted one
        done.append(i)

    b = memory_booster(interrupted, max_retries=2, retry_backoff_s=0.01, concurrent_num=4)
    boosters.append(b)
    b.push_many([(i,) for i in range(10)])
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 1 and len(done) == 9, 10)
    letter = b.dead_letters()[0]
    assert letter.error == "KeyboardInterrupt: " and letter.attempts == 3
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    engine = b._engine
    assert engine is not None and not any(g.dead for g in engine._puller_greenlets)


def test_a_call_that_never_yields_past_its_timeout_succeeds_with_a_warning(
    boosters: list[Any], log_lines: list[str]
) -> None:
    done: list[int] = []

    def burn_cpu() -> None:
        # time.sleep is gevent's (it yields); a busy loop never gives the timer a chance.
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        done.append(1)

    b = memory_booster(burn_cpu, task_timeout_s=0.1, max_retries=0)
    boosters.append(b)
    b.push()
    b.consume()
    assert b.wait_until_idle(timeout_s=10)
    assert done == [1] and b.dead_letter_count() == 0
    overruns = [line for line in log_lines if "past task_timeout_s=0.1" in line]
    assert len(overruns) == 1 and "| WARNING" in overruns[0]
    assert "could not be interrupted" in overruns[0]


async def _a_coroutine() -> int:
    return 1


def test_a_function_returning_a_coroutine_is_dead_lettered_at_once(
    boosters: list[Any],
) -> None:
    calls: list[int] = []

    def returns_coroutine() -> Any:
        calls.append(1)
        return _a_coroutine()

    b = memory_booster(returns_coroutine, max_retries=3, retry_backoff_s=0.01)
    boosters.append(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b.push()
        b.consume()
        assert wait_for(lambda: b.dead_letter_count() == 1, 10)
        assert b.wait_until_idle(timeout_s=10)
        gc.collect()
    letter = b.dead_letters()[0]
    assert calls == [1] and letter.attempts == 1  # no retries: it can never work
    assert letter.error.startswith("TypeError: ") and "never awaits" in letter.error
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


class _YieldingAck:
    """A memory receiver whose ack and fetch yield to other greenlets, as pika's do (they drive
    the connection): calls can finish while the puller sends acks."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.acked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def ack(self, deliveries: Any) -> None:
        gevent.sleep(0)
        self.inner.ack(deliveries)
        self.acked += len(deliveries)

    def fetch(self, max_count: int, timeout_s: float) -> Any:
        gevent.sleep(0)
        return self.inner.fetch(max_count, timeout_s)


def test_acks_of_calls_that_finish_while_acks_are_sent_do_not_wait_for_a_poll(
    boosters: list[Any],
) -> None:
    b = memory_booster(lambda i: None, poll_timeout_s=4, concurrent_num=100, fetch_batch=50)
    boosters.append(b)
    receivers: list[_YieldingAck] = []
    opened = b.broker.open_receiver

    def open_receiver(queue: str, **kw: Any) -> _YieldingAck:
        receivers.append(_YieldingAck(opened(queue, **kw)))
        return receivers[-1]

    b.broker.open_receiver = open_receiver  # type: ignore[method-assign]
    b.push_many([(i,) for i in range(500)])
    b.consume()
    # With the bug the puller, finding no call running after its flush, fetched for a whole
    # poll_timeout_s (4 s here) while the acks of the calls that ended during that flush
    # waited in its mailbox.
    assert wait_for(lambda: sum(r.acked for r in receivers) == 500, 2)

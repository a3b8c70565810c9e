"""The promises every broker keeps (see geboost/brokers/base.py), on the protocol directly and
through a booster. A third-party broker proves itself by adding its kind to ``spec``."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest

from geboost import (
    BoostOptions,
    Broker,
    BrokerConfig,
    BrokerKind,
    ConfigurationError,
    new_booster,
)
from geboost.brokers.base import get_broker_factory
from geboost.message import DeadLetter, decode_task, encode, make_task
from tests.contract.conftest import BrokerSpec
from tests.support import drain, wait_for


def _bodies(n: int, tag: str = "m") -> list[bytes]:
    return [f'{{"task_id":"{tag}{i}"}}'.encode() for i in range(n)]


# ---------------------------------------------------------------- the protocol
def test_publish_then_fetch_in_order_and_counted(broker: Broker, queue_name: str) -> None:
    broker.publish(queue_name, _bodies(5))
    assert wait_for(lambda: broker.count(queue_name) == 5, 5)
    r = broker.open_receiver(queue_name)
    try:
        got = drain(r, 5)
        assert [d.body for d in got] == _bodies(5)
        r.ack(got)
    finally:
        r.close()
    assert broker.count(queue_name) == 0


def test_fetch_respects_max_count_and_times_out_empty(broker: Broker, queue_name: str) -> None:
    broker.publish(queue_name, _bodies(10))
    r = broker.open_receiver(queue_name)
    try:
        first = drain(r, 3)
        assert len(first) == 3
        r.ack(first)
        rest = drain(r, 7)
        r.ack(rest)
        started = time.monotonic()
        assert list(r.fetch(5, 0.3)) == []
        assert time.monotonic() - started < 5  # returned by itself, did not hang
    finally:
        r.close()


# What each broker does with an ack sent on a new connection for a message fetched on the old
# one: True, the ack settles it (its hold belongs to the receiver, not the connection); False,
# the ack is ignored (its delivery tag died with the connection) and the broker gave the
# message back when that connection closed, so it is delivered exactly once more. And whether
# the broker can count held messages. A third-party broker adds its kind to both.
_ACK_KEPT_ACROSS_RECONNECT = {
    BrokerKind.MEMORY: True,
    BrokerKind.REDIS: True,
    BrokerKind.RABBITMQ: False,
}
_COUNTS_HELD = {BrokerKind.MEMORY: True, BrokerKind.REDIS: True, BrokerKind.RABBITMQ: False}


def test_held_messages_are_invisible_until_requeued(
    spec: BrokerSpec, broker: Broker, queue_name: str
) -> None:
    broker.publish(queue_name, _bodies(2))
    a, b = broker.open_receiver(queue_name), broker.open_receiver(queue_name)
    try:
        held = drain(a, 2)
        assert len(held) == 2
        assert list(b.fetch(2, 0.3)) == []
        assert broker.in_flight(queue_name) == (2 if _COUNTS_HELD[spec.kind] else None)
        a.requeue(held)
        again = drain(b, 2)
        assert sorted(d.body for d in again) == sorted(_bodies(2))
        b.ack(again)
    finally:
        a.close()
        b.close()
    assert broker.count(queue_name) == 0


def test_close_gives_back_what_is_held_and_ack_is_final(broker: Broker, queue_name: str) -> None:
    broker.publish(queue_name, _bodies(3))
    a = broker.open_receiver(queue_name)
    held = drain(a, 3)
    a.ack(held[:1])
    a.close()
    assert wait_for(lambda: broker.count(queue_name) == 2, 5)
    b = broker.open_receiver(queue_name)
    try:
        back = drain(b, 2)
        assert sorted(d.body for d in back) == sorted(_bodies(3)[1:])
        b.ack(back)
    finally:
        b.close()


def test_reconnect_then_keep_working(spec: BrokerSpec, broker: Broker, queue_name: str) -> None:
    r = broker.open_receiver(queue_name)
    try:
        r.reconnect()
        broker.publish(queue_name, _bodies(1))
        got = drain(r, 1)
        assert [d.body for d in got] == _bodies(1)
        r.reconnect()
        r.ack(got)
        r.keepalive()
    finally:
        r.close()
    if _ACK_KEPT_ACROSS_RECONNECT[spec.kind]:
        # Settled: nothing waits and nothing is held (no window to wait out).
        assert wait_for(lambda: broker.count(queue_name) == 0, 5)
        assert broker.in_flight(queue_name) == 0
        return
    b = broker.open_receiver(queue_name)
    try:
        again = drain(b, 1)
        b.ack(again)
    finally:
        b.close()
    # Delivered exactly once more: never lost, never multiplied.
    assert [d.body for d in again] == _bodies(1)
    assert wait_for(lambda: broker.count(queue_name) == 0, 5)


def test_purge_counts_and_empties(broker: Broker, queue_name: str) -> None:
    broker.publish(queue_name, _bodies(4))
    assert wait_for(lambda: broker.count(queue_name) == 4, 5)
    assert broker.purge(queue_name) == 4
    assert broker.count(queue_name) == 0


def test_unknown_transport_option_is_named(spec: BrokerSpec) -> None:
    config = BrokerConfig(
        broker_url=spec.config.broker_url, broker_transport_options={"special1": 123}
    )
    with pytest.raises(ConfigurationError, match="special1"):
        get_broker_factory(spec.kind)(config)


# ---------------------------------------------------------------- through a booster
def _options(spec: BrokerSpec, queue_name: str, func: Any, **kw: Any) -> BoostOptions[Any, Any]:
    return BoostOptions(
        queue_name=queue_name,
        consume_func=func,
        broker_kind=spec.kind,
        broker_config=spec.config,
        handle_signals=False,
        **kw,
    )


def test_every_task_runs_once(spec: BrokerSpec, queue_name: str, stop_after: list[Any]) -> None:
    ran: list[int] = []

    def record(i: int) -> None:
        gevent.sleep(0.001)
        ran.append(i)

    b = new_booster(_options(spec, queue_name, record, conn_num=2, concurrent_num=20))
    stop_after.append(b)
    b.push_many([(i,) for i in range(150)])
    b.push(150)
    b.consume()
    assert b.wait_until_idle(timeout_s=30)
    assert sorted(ran) == list(range(151))
    b.stop(timeout_s=5)
    assert b.message_count() == 0


def test_failures_retry_then_dead_letter_then_requeue(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    calls: list[int] = []

    def flaky(i: int) -> None:
        calls.append(i)
        if i == 1:
            raise ValueError("always fails")
        if calls.count(i) < 2:
            raise ValueError("fails once")

    b = new_booster(_options(spec, queue_name, flaky, max_retries=2, retry_backoff_s=0.01))
    stop_after.append(b)
    b.push(0)
    b.push(1)
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 1, 20)
    assert b.wait_until_idle(timeout_s=20)
    assert calls.count(0) == 2 and calls.count(1) == 3
    [letter] = b.dead_letters()
    assert letter.attempts == 3 and "always fails" in letter.error
    assert decode_task(letter.body.encode()).args == [1]
    assert b.dead_letter_count() == 1  # listing did not consume
    b.stop(timeout_s=5)
    assert b.requeue_dead_letters() == 1
    assert b.dead_letter_count() == 0 and b.message_count() == 1


def test_undecodable_message_is_dead_lettered_and_consumer_goes_on(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    ran: list[int] = []
    b = new_booster(_options(spec, queue_name, ran.append))
    stop_after.append(b)
    b.broker.publish(queue_name, [b"\xff not json"])
    b.push(7)
    b.consume()
    assert wait_for(lambda: ran == [7] and b.dead_letter_count() == 1, 20)
    [letter] = b.dead_letters()
    assert letter.attempts == 0 and "not json" in letter.body


def test_building_a_booster_does_not_connect(spec: BrokerSpec, queue_name: str) -> None:
    # Port 9 (discard) on loopback has no broker: construction must neither fail nor hang.
    unreachable = BrokerConfig(broker_url="127.0.0.1:9" if spec.kind != "memory" else "x")
    b = new_booster(
        BoostOptions(
            queue_name=queue_name,
            consume_func=print,
            broker_kind=spec.kind,
            broker_config=unreachable,
        )
    )
    assert b.queue_name == queue_name


def test_dead_letters_listing_honours_limit_and_consumes_nothing(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    def fail(i: int) -> None:
        raise RuntimeError(f"no {i}")

    b = new_booster(_options(spec, queue_name, fail, max_retries=0))
    stop_after.append(b)
    b.push_many([(i,) for i in range(150)])
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 150, 30)
    b.stop(timeout_s=5)
    assert len(b.dead_letters(limit=3)) == 3
    letters = b.dead_letters(limit=1000)
    assert sorted(decode_task(x.body.encode()).args[0] for x in letters) == list(range(150))
    assert b.dead_letter_count() == 150
    assert b.requeue_dead_letters(limit=100) == 100
    assert b.dead_letter_count() == 50 and b.message_count() == 100


def _takes_text(text: str) -> None:
    del text


def test_dead_letter_reads_and_requeue_take_every_letter_even_behind_a_large_one(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    # A large letter takes a while to arrive, and the small ones behind it wait for it: an
    # empty fetch meanwhile is not the end of the queue.
    b = new_booster(_options(spec, queue_name, _takes_text))
    stop_after.append(b)
    letters = []
    for i in range(41):
        text = "L" * 30_000_000 if i == 20 else f"s{i}"
        original = encode(make_task((text,), {})).decode()
        letter = DeadLetter(
            queue_name=queue_name, body=original, error="boom", attempts=1, failed_at=time.time()
        )
        letters.append(encode(letter))
    b.broker.publish(b.dead_letter_queue_name, letters)
    assert wait_for(lambda: b.dead_letter_count() == 41, 20)
    reads = [len(b.dead_letters(limit=100)) for _ in range(5)]
    assert reads == [41] * 5
    assert b.requeue_dead_letters() == 41
    assert b.dead_letter_count() == 0
    assert wait_for(lambda: b.message_count() == 41, 20)


def test_requeue_dead_letters_moves_every_valid_letter_past_invalid_ones(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    b = new_booster(_options(spec, queue_name, _takes_text))
    stop_after.append(b)
    letters = []
    for i in range(1200):  # more than one fetch of requeue_dead_letters (500)
        original = "not a task" if i in (3, 700) else encode(make_task((f"s{i}",), {})).decode()
        letter = DeadLetter(
            queue_name=queue_name, body=original, error="boom", attempts=1, failed_at=time.time()
        )
        letters.append(encode(letter))
    b.broker.publish(b.dead_letter_queue_name, letters)
    assert wait_for(lambda: b.dead_letter_count() == 1200, 20)
    assert b.requeue_dead_letters() == 1198
    assert b.dead_letter_count() == 2  # the two that are not tasks stay
    assert wait_for(lambda: b.message_count() == 1198, 20)

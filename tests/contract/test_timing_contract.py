"""Delayed tasks (countdown, eta), expiry and priorities, on every broker (issue 12)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from geboost import BoostOptions, PushOptions, new_booster
from geboost.booster import Booster
from geboost.brokers.base import get_broker_factory
from tests.contract.conftest import BrokerSpec
from tests.support import wait_for


def _booster(spec: BrokerSpec, queue_name: str, func: Any, **kw: Any) -> Booster[Any, Any]:
    return new_booster(
        BoostOptions(
            queue_name=queue_name,
            consume_func=func,
            broker_kind=spec.kind,
            broker_config=spec.config,
            handle_signals=False,
            **kw,
        )
    )


def _forget_delay_queues(spec: BrokerSpec, queue_name: str, delays_s: list[float]) -> None:
    """RabbitMQ keeps one durable delay queue per delay step; delete this test's."""
    broker = get_broker_factory(spec.kind)(spec.config)
    try:
        names = getattr(broker, "delay_queue_names", None)
        delete = getattr(broker, "delete_queue", None)
        if names is not None and delete is not None:
            for name in names(queue_name, delays_s):
                delete(name)
    finally:
        broker.close()


def test_countdown_and_eta_run_after_their_due_time_and_plain_tasks_do_not_wait(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    ran: dict[str, float] = {}

    def record(name: str) -> None:
        ran[name] = time.time()

    b = _booster(spec, queue_name, record)
    stop_after.append(b)
    try:
        pushed_at = time.time()
        b.push_with(PushOptions(countdown_s=1.5), "countdown")
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.2)
        b.push_with(PushOptions(eta=eta), "eta")
        b.push("plain")
        b.consume()
        assert wait_for(lambda: len(ran) == 3, timeout_s=20)
        assert ran["countdown"] >= pushed_at + 1.5 - 0.002
        assert ran["eta"] >= eta.timestamp() - 0.002
        assert ran["plain"] < ran["eta"] < ran["countdown"]
        b.stop(timeout_s=5)
        assert b.message_count() == 0
    finally:
        _forget_delay_queues(spec, queue_name, [1.5, 1.2])


def test_an_expired_task_is_dead_lettered_as_expired_and_not_run(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    ran: list[str] = []
    b = _booster(spec, queue_name, ran.append, msg_expire_s=0.3, max_retries=0)
    stop_after.append(b)
    stale = b.push("stale")  # expires by the booster's msg_expire_s
    own = b.push_with(PushOptions(expire_s=0.2), "own")  # by its own expire_s
    # Delayed: expiry counts from its due time, so it still runs.
    b.push_with(PushOptions(countdown_s=0.5, expire_s=5), "delayed")
    expired_by = time.time() + 0.35
    assert wait_for(lambda: time.time() > expired_by, timeout_s=2)
    b.push_with(PushOptions(expire_s=30), "fresh")
    b.consume()
    assert wait_for(lambda: b.dead_letter_count() == 2 and len(ran) == 2, timeout_s=20)
    assert sorted(ran) == ["delayed", "fresh"]
    letters = b.dead_letters()
    assert sorted(letter.task_id for letter in letters) == sorted([stale.task_id, own.task_id])
    assert {letter.error for letter in letters} == {"expired"}
    assert {letter.attempts for letter in letters} == {0}
    engine = b._engine
    assert engine is not None and engine.expired_count == 2
    b.stop(timeout_s=5)
    _forget_delay_queues(spec, queue_name, [0.5])


def test_priorities_are_taken_highest_first_then_in_push_order(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    order: list[tuple[int, int]] = []

    def record(priority: int, index: int) -> None:
        order.append((priority, index))

    b = _booster(spec, queue_name, record, concurrent_num=1)
    stop_after.append(b)
    for index in range(1000):
        priority = (index * 7) % 10
        if priority:
            b.push_with(PushOptions(priority=priority), priority, index)
        else:
            b.push(0, index)  # a plain push is priority 0
    assert b.message_count() == 1000
    b.consume()
    assert wait_for(lambda: len(order) == 1000, timeout_s=60)
    assert order == sorted(order, key=lambda pair: (-pair[0], pair[1]))
    b.stop(timeout_s=5)


def test_a_delayed_task_pushed_before_any_consumer_existed_is_kept(
    spec: BrokerSpec, queue_name: str, stop_after: list[Any]
) -> None:
    # RabbitMQ drops what a delay queue dead-letters to a queue that does not exist yet.
    ran: list[int] = []
    b = _booster(spec, queue_name, ran.append)
    stop_after.append(b)
    due = time.time() + 0.3
    b.push_with(PushOptions(countdown_s=0.3), 7)
    assert wait_for(lambda: time.time() > due + 0.5, timeout_s=3)
    assert wait_for(lambda: b.message_count() == 1, timeout_s=5)
    b.consume()
    assert wait_for(lambda: ran == [7], timeout_s=10)
    b.stop(timeout_s=5)
    _forget_delay_queues(spec, queue_name, [0.3])

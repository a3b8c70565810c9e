"""Delayed, expiring and prioritised pushes: what needs no server (issue 12)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from geboost import BoostOptions, ConfigurationError, PushOptions, new_booster, register_broker
from geboost.brokers.memory import _queue as memory_queue
from geboost.brokers.rabbitmq import delay_step_ms
from geboost.message import TaskMessage, decode_task, encode, make_task
from tests.plugin.toy_broker import ToyBroker
from tests.support import memory_booster, wait_for


def _add(a: int, b: int) -> int:
    return a + b


def test_a_broker_without_publish_timed_refuses_delays_and_priorities_and_sends_nothing() -> None:
    register_broker("toy", ToyBroker)
    b = new_booster(
        BoostOptions(
            queue_name=f"toy-{uuid.uuid4().hex[:6]}",
            consume_func=_add,
            broker_kind="toy",
            handle_signals=False,
        )
    )
    for opts in (PushOptions(countdown_s=1), PushOptions(priority=3)):
        with pytest.raises(ConfigurationError, match="'toy' does not support delayed"):
            b.push_with(opts, 1, 2)
    assert b.message_count() == 0
    # What such a broker can do still works: an id, an expiry (checked by the engine).
    b.push_with(PushOptions(task_id="mine", expire_s=60), 1, 2)
    assert b.message_count() == 1
    b.purge()


def test_plain_envelopes_carry_no_scheduling_fields_and_old_readers_get_defaults() -> None:
    plain = encode(make_task((1,), {}))
    assert b"due_time" not in plain and b"priority" not in plain and b"kwargs" not in plain
    assert decode_task(plain).priority == 0

    class OldTask(msgspec.Struct, kw_only=True):  # a reader from before these fields
        task_id: str
        args: list[int] = []
        publish_time: float = 0.0

    timed = encode(TaskMessage(task_id="t", args=[1], due_time=5.0, expires_at=9.0, priority=4))
    assert msgspec.json.decode(timed, type=OldTask).args == [1]
    assert decode_task(timed).priority == 4


def test_push_with_writes_due_time_expiry_and_priority_into_the_envelope() -> None:
    b = memory_booster(_add)
    eta = datetime.now(timezone.utc) + timedelta(seconds=60)
    b.push_with(PushOptions(eta=eta, expire_s=5, priority=2), 1, 2)
    receiver = b.broker.open_receiver(b.queue_name)
    assert receiver.fetch(1, 0) == []  # not due for a minute
    b.purge()
    b.push_with(PushOptions(expire_s=5, priority=2), 1, 2)
    (delivery,) = receiver.fetch(1, 0)
    message = decode_task(delivery.body)
    assert message.priority == 2 and message.due_time == 0.0
    assert message.expires_at == pytest.approx(message.publish_time + 5, abs=0.05)
    receiver.ack([delivery])
    receiver.close()


def test_an_eta_in_the_past_runs_at_once() -> None:
    b = memory_booster(_add)
    b.push_with(PushOptions(eta=datetime.now(timezone.utc) - timedelta(hours=1)), 1, 2)
    receiver = b.broker.open_receiver(b.queue_name)
    (delivery,) = receiver.fetch(1, 0)
    assert decode_task(delivery.body).due_time == 0.0
    receiver.ack([delivery])
    receiver.close()


@pytest.mark.parametrize(
    ("delay_ms", "step_ms"),
    [(0, 0), (9, 0), (10, 10), (999, 900), (1000, 1000), (5370, 5000), (19_999, 10_000)],
)
def test_rabbitmq_delay_steps_keep_one_significant_digit(delay_ms: int, step_ms: int) -> None:
    assert delay_step_ms(delay_ms) == step_ms


def test_rabbitmq_delay_steps_stay_within_the_ttl_limit() -> None:
    assert delay_step_ms(10**12) <= 2**32 - 1


def test_push_with_delays_are_type_checked_like_push(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    source = tmp_path / "snippet.py"
    source.write_text(
        "from geboost import BoostOptions, PushOptions, new_booster\n"
        "def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "b = new_booster(BoostOptions(queue_name='q', consume_func=add))\n"
        "b.push_with(PushOptions(countdown_s=5), 1, 2)\n"
        "b.push_with(PushOptions(priority=9), 1, y=2)\n"
        "b.push_with(PushOptions(countdown_s=5), 'one', 2)  # line 7\n"
        "b.push_with(PushOptions(expire_s=5), 1)  # line 8\n"
    )
    out, _err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"), str(source)]
    )
    errors = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert status == 1 and errors == {7, 8}, out


def test_a_task_pulled_long_before_it_is_due_goes_back_to_the_delay_unrun() -> None:
    # A broker's delay may hand a message over early (RabbitMQ's delay steps): due within a
    # second it is held; farther, it goes back to the broker's delay and is acked.
    ran: list[int] = []
    b = memory_booster(ran.append)
    early = TaskMessage(task_id="early", args=[1], due_time=time.time() + 30)
    b.broker.publish(b.queue_name, [encode(early)])
    b.consume()
    try:
        queue = memory_queue(b.broker._namespace, b.queue_name)  # type: ignore[attr-defined]
        assert wait_for(lambda: len(queue.delayed) == 1, 5)  # back in the broker's delay
        assert wait_for(lambda: b.in_flight_count() == 0, 5)  # and acked
        assert b.message_count() == 1
        assert ran == []
        engine = b._engine
        assert engine is not None and engine.next_due() is None  # nothing held in the worker
    finally:
        b.stop(timeout_s=2)


def test_rabbitmq_work_queues_get_max_priority_unless_told_otherwise() -> None:
    from geboost.brokers.rabbitmq_config import RabbitSettings

    plain = RabbitSettings.from_config("", {})
    assert plain.arguments_for("q") == {"x-max-priority": 9}
    assert plain.arguments_for("q.dlq") == {}
    assert plain.arguments_for("q.delay-5000ms") == {
        "x-message-ttl": 5000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q",
    }
    legacy = RabbitSettings.from_config("", {"queue_arguments": {"x-max-priority": None}})
    assert legacy.arguments_for("q") == {}
    quorum = RabbitSettings.from_config("", {"queue_arguments": {"x-queue-type": "quorum"}})
    assert quorum.arguments_for("q") == {"x-queue-type": "quorum"}

"""A dead-letter queue that cannot be written (issue 8, case 3), on Redis and RabbitMQ.

Redis: the ``.dlq`` key holds another type (WRONGTYPE). RabbitMQ: the ``.dlq`` queue exists with
other arguments (PRECONDITION_FAILED). Promises: the function never runs more than
``1 + max_retries`` times because a dead letter could not be written; the message is kept; the
write is retried with a growing, capped delay and one log line per retry; the letter lands once
the queue can be written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pika
import pytest
import redis

from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster
from tests.support import cleanup_queues, port_open, skip_or_fail, wait_for

TASKS = 5


def _break_redis(dlq: str) -> Callable[[], None]:
    client = redis.Redis(host="127.0.0.1", port=6379)
    client.set(dlq, "not a list")  # LPUSH now fails with WRONGTYPE
    return lambda: client.delete(dlq) and None


def _break_rabbitmq(dlq: str) -> Callable[[], None]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    # geboost declares the dead-letter queue without arguments: this one differs.
    channel.queue_declare(dlq, durable=True, arguments={"x-max-length": 1000})

    def repair() -> None:
        channel.queue_delete(dlq)
        connection.close()

    return repair


@pytest.fixture(params=["redis", "rabbitmq"])
def kind(request: pytest.FixtureRequest) -> BrokerKind:
    port = 6379 if request.param == "redis" else 5672
    if not port_open("127.0.0.1", port):
        skip_or_fail(f"no {request.param} server answers on 127.0.0.1:{port}")
    return BrokerKind(request.param)


def test_unwritable_dead_letter_queue_never_reruns_the_task(
    kind: BrokerKind, queue_name: str, log_lines: list[str]
) -> None:
    calls: Counter[int] = Counter()

    def always_fails(i: int) -> None:
        calls[i] += 1
        raise ValueError(f"task {i} fails")

    b = new_booster(
        BoostOptions(
            queue_name=queue_name,
            consume_func=always_fails,
            broker_kind=kind,
            broker_config=BrokerConfig(broker_url="127.0.0.1"),
            max_retries=1,
            retry_backoff_s=0.05,
            reconnect_interval_s=1.0,  # caps the delay between dead-letter write tries
            handle_signals=False,
        )
    )
    breaker = _break_redis if kind is BrokerKind.REDIS else _break_rabbitmq
    repair = breaker(b.dead_letter_queue_name)
    repaired = False
    try:
        b.push_many([(i,) for i in range(TASKS)])
        b.consume()

        def write_failures() -> Counter[str]:
            return Counter(
                line.split("task=")[1].split("]")[0]
                for line in log_lines
                if "could not write to dead-letter queue" in line
            )

        # Three failed writes per task take at least 1 + 1 + 1 s of backoff: long enough for
        # today's bug (requeue at once, attempts reset) to rerun each task many times.
        assert wait_for(
            lambda: len(write_failures()) == TASKS and min(write_failures().values()) >= 3, 30
        )
        assert calls == Counter({i: 2 for i in range(TASKS)})
        repair()
        repaired = True
        assert wait_for(lambda: b.dead_letter_count() == TASKS, 30)
        assert b.wait_until_idle(timeout_s=10)
        assert calls == Counter({i: 2 for i in range(TASKS)})
        letters = b.dead_letters(limit=TASKS + 1)
        assert sorted(letter.attempts for letter in letters) == [2] * TASKS
        assert all("ValueError" in letter.traceback for letter in letters)
        assert b.message_count() == 0
    finally:
        if not repaired:
            repair()
        b.stop(timeout_s=5)
        cleanup_queues(b.broker, queue_name)

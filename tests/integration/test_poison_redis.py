"""Issue 8 case 2 and issue 9 s1 on Redis: poison bodies are dead-lettered exactly once and
nothing stays held; typed arguments round-trip; an idle worker stays quiet, also after poison.

The scenario tests use the shared server on 6379 (unique queue names, their keys deleted after);
the command-rate test starts its own redis-server on a free port, so that no one else's
commands are counted. Skipped when Redis is absent, failed when ``CI`` is set."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from geboost import Booster, BoostOptions, BrokerConfig, BrokerKind, new_booster
from tests.support import (
    REDIS_SERVER,
    free_port,
    port_open,
    skip_or_fail,
    start_redis_server,
    stop_process,
    wait_for,
)
from tests.unit.test_poison import GOOD, poison_scenario, recorder

pytestmark = pytest.mark.redis


@pytest.fixture
def shared() -> Iterator[redis.Redis]:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    client = redis.Redis(port=6379)
    yield client
    client.close()


@pytest.fixture
def made(shared: redis.Redis) -> Iterator[list[Booster[Any, Any]]]:
    """Boosters appended here are stopped and every key of their queue deleted after."""
    boosters: list[Booster[Any, Any]] = []
    yield boosters
    for b in boosters:
        b.stop(timeout_s=5)
        name = b.queue_name
        keys = [name, f"{name}.dlq", *shared.scan_iter(match=f"geboost:{name}:*")]
        shared.delete(*keys)


def _redis_booster(func: Any, url: str = "127.0.0.1:6379", **options: Any) -> Booster[Any, Any]:
    return new_booster(
        BoostOptions(
            queue_name=f"test-poison-{uuid.uuid4().hex[:10]}",
            consume_func=func,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=url),
            handle_signals=False,
            **options,
        )
    )


def test_poison_bodies_on_redis_are_dead_lettered_once_and_nothing_stays_held(
    made: list[Booster[Any, Any]], log_lines: list[str]
) -> None:
    ran: list[int] = []
    booster = _redis_booster(recorder(ran), max_retries=3, poll_timeout_s=0.2)
    made.append(booster)
    poison_scenario(booster, ran, log_lines)


class Size(enum.Enum):
    S = "s"
    XL = "xl"


@dataclasses.dataclass
class Item:
    sku: uuid.UUID
    price: decimal.Decimal
    tags: frozenset[str]


def test_typed_arguments_round_trip_through_redis(made: list[Booster[Any, Any]]) -> None:
    got: list[tuple[Any, ...]] = []

    def consume(
        when: dt.datetime,
        blob: bytes,
        items: list[Item],
        counts: dict[int, set[Size]],
        span: tuple[dt.date, dt.timedelta] | None = None,
    ) -> None:
        got.append((when, blob, items, counts, span))

    booster = _redis_booster(consume, max_retries=0, poll_timeout_s=0.2)
    made.append(booster)
    call = (
        dt.datetime(2026, 11, 28, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        b"\x00\xffbinary",
        [Item(uuid.UUID(int=5), decimal.Decimal("19.990"), frozenset({"a", "b"}))],
        {1: {Size.S}, 2: {Size.S, Size.XL}},
        (dt.date(2026, 1, 31), dt.timedelta(hours=36)),
    )
    booster.push(*call)
    booster.push(call[0], call[1], items=call[2], counts=call[3])
    booster.consume()
    assert wait_for(lambda: len(got) == 2, 15)
    assert got == [call, (*call[:4], None)]
    assert [type(v) for v in got[0]] == [type(v) for v in call]
    assert (
        type(got[0][2][0].price) is decimal.Decimal and got[0][0].utcoffset() == call[0].utcoffset()
    )
    assert booster.dead_letter_count() == 0


# ----------------------------------------------------------------- an idle worker stays quiet
@pytest.fixture
def private_redis() -> Iterator[int]:
    if not os.path.exists(REDIS_SERVER):
        skip_or_fail(f"{REDIS_SERVER} is not installed")
    with tempfile.TemporaryDirectory(prefix="geboost-poison-") as directory:
        port = free_port()
        proc = start_redis_server(directory, port)
        try:
            yield port
        finally:
            stop_process(proc)


def _commands_per_s(client: redis.Redis, window_s: float) -> float:
    """Commands the server processed per second over ``window_s``, the two INFO excluded."""
    before = int(client.info("stats")["total_commands_processed"])
    started = time.monotonic()
    time.sleep(window_s)
    after = int(client.info("stats")["total_commands_processed"])
    return (after - before - 1) / (time.monotonic() - started)


def test_an_idle_redis_worker_stays_quiet_before_and_after_poison(
    private_redis: int, log_lines: list[str]
) -> None:
    conn_num = 2
    ran: list[int] = []
    booster = _redis_booster(
        recorder(ran), url=f"127.0.0.1:{private_redis}", conn_num=conn_num, max_retries=3
    )
    client = redis.Redis(port=private_redis)
    try:
        booster.consume()
        booster.push(-1)
        assert wait_for(lambda: ran == [-1] and booster.in_flight_count() == 0, 10)
        clean = _commands_per_s(client, 3.0)
        for body in [b'{"task_id":"\xff\xfe","args":[1]}', b"[" * 100_000, b"garbage"]:
            booster.broker.publish(booster.queue_name, [body])
        booster.push_many([(i,) for i in range(GOOD)])
        assert wait_for(lambda: len(ran) == GOOD + 1 and booster.dead_letter_count() == 3, 15)
        assert wait_for(lambda: booster.in_flight_count() == 0, 10)
        after_poison = _commands_per_s(client, 3.0)
        print(f"idle Redis commands/s with conn_num={conn_num}: "
              f"clean {clean:.1f}, after poison {after_poison:.1f}")  # fmt: skip
        # Issue 8: at most about 10 commands a second per puller when idle.
        assert clean <= 10 * conn_num
        assert after_poison <= 10 * conn_num
        assert booster.message_count() == 0
    finally:
        booster.stop(timeout_s=5)
        client.close()

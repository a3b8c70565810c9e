"""Results (RPC), task status, fleet-wide pause/resume and dedupe, on every broker: memory,
Redis (its own Redis is the state store) and RabbitMQ (``state_url`` = the shared Redis).

Network brokers are skipped on a developer's machine without them and fail in CI. Every Redis
key a test makes carries its queue name (``geboost:<queue>:...``) and is deleted after it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import gevent
import msgspec
import pytest
import redis
from gevent.event import Event

from geboost import (
    AsyncResult,
    Booster,
    BoostOptions,
    BrokerConfig,
    BrokerKind,
    ConfigurationError,
    GeboostError,
    PushOptions,
    ResultTimeout,
    TaskFailed,
    new_booster,
)
from geboost.brokers.redis_config import RedisSettings, parse_target
from geboost.state.redis import RedisStateStore
from tests.support import (
    REDIS_SERVER,
    booster_options,
    cleanup_queues,
    delete_state_keys,
    free_port,
    port_open,
    python_cmd,
    running,
    skip_or_fail,
    start_redis_server,
    stop_process,
    unique_name,
    wait_for,
)

REDIS_URL = "redis://127.0.0.1:6379"


class Reading(msgspec.Struct):
    at: datetime
    amount: Decimal
    tags: list[str]


Make = Callable[..., Booster[Any, Any]]


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis" and not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    if request.param == "rabbitmq":
        if not port_open("127.0.0.1", 5672):
            skip_or_fail("no RabbitMQ server answers on 127.0.0.1:5672")
        if not port_open("127.0.0.1", 6379):
            skip_or_fail("no Redis server (the RabbitMQ tests' state store) on 127.0.0.1:6379")
    return str(request.param)


@pytest.fixture
def make(kind: str) -> Iterator[Make]:
    """Builds boosters on one queue of this test; stops them and removes everything after."""
    queue = unique_name("st")
    made: list[Booster[Any, Any]] = []

    def build(func: Callable[..., Any], **options: Any) -> Booster[Any, Any]:
        settings = {"handle_signals": False, "poll_timeout_s": 0.2, "result_ttl_s": 60.0}
        settings.update(booster_options(kind, queue))
        settings.update(options)
        b = new_booster(BoostOptions(queue_name=queue, consume_func=func, **settings))
        made.append(b)
        return b

    yield build
    for b in made:
        b.stop(timeout_s=5)
    if made:
        cleanup_queues(made[0].broker, queue)
        made[0].broker.close()
    if kind != "memory":
        delete_state_keys(queue)


# ----------------------------------------------------------------- results


def test_typed_result_round_trip(make: Make) -> None:
    def read(n: int) -> Reading:
        return Reading(datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc), Decimal("1.25") * n, ["a"])

    b = make(read)
    b.consume()
    result = b.push(2)
    assert isinstance(result, AsyncResult)
    got = result.get(timeout_s=20)
    assert got == Reading(datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc), Decimal("2.50"), ["a"])
    assert type(got.amount) is Decimal
    assert result.status() == "succeeded"
    assert result.ready()
    # From an id, as another process would; and get() on a finished task returns at once.
    again = b.result(result.task_id)
    assert again.get(timeout_s=0) == got


def test_task_failed_carries_the_remote_traceback(make: Make) -> None:
    def explode(x: int) -> int:
        raise ValueError(f"bad {x}")

    b = make(explode, max_retries=0)
    b.consume()
    result = b.push(7)
    with pytest.raises(TaskFailed) as info:
        result.get(timeout_s=20)
    assert isinstance(info.value, GeboostError)
    assert info.value.error_type == "ValueError"
    assert info.value.message == "bad 7"
    assert "in explode" in info.value.traceback
    assert 'raise ValueError(f"bad {x}")' in info.value.traceback
    assert result.status() == "failed"


def test_result_timeout_and_pending(make: Make) -> None:
    b = make(lambda x: x)
    result = b.push(1)  # nobody consumes
    assert result.status() == "pending"
    assert not result.ready()
    with pytest.raises(ResultTimeout) as info:
        result.get(timeout_s=0.3)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, GeboostError)


def test_every_status_value(make: Make) -> None:
    release = Event()
    failed_once: set[int] = set()

    def work(x: int) -> int:
        if x == 1:
            release.wait(20)
        if x == 2 and x not in failed_once:
            failed_once.add(x)
            raise RuntimeError("first attempt fails")
        if x == 3:
            raise RuntimeError("always fails")
        return x

    b = make(work, max_retries=1, retry_backoff_s=60)
    assert b.result("no-such-task").status() == "unknown"
    pending = b.push(1)
    assert pending.status() == "pending"
    b.consume()
    assert wait_for(lambda: pending.status() == "started", 20)
    retrying = b.push(2)
    assert wait_for(lambda: retrying.status() == "retrying", 20)
    release.set()
    assert pending.get(timeout_s=20) == 1
    assert pending.status() == "succeeded"
    b2 = make(work, max_retries=0)  # same queue: the next worker dead-letters at once
    b.stop(timeout_s=5)
    b2.consume()
    failed = b2.push(3)
    with pytest.raises(TaskFailed):
        failed.get(timeout_s=20)
    assert failed.status() == "failed"


def test_results_expire_after_result_ttl_s(make: Make) -> None:
    b = make(lambda x: x, result_ttl_s=0.5)
    b.consume()
    result = b.push(5)
    assert result.get(timeout_s=20) == 5
    assert wait_for(lambda: result.status() == "unknown", 10)
    with pytest.raises(ResultTimeout):
        result.get(timeout_s=0.2)


def test_results_off_costs_no_store_and_get_says_so(make: Make) -> None:
    b = make(lambda x: x, result_ttl_s=0)
    result = b.push(1)
    assert result.status() == "unknown"
    with pytest.raises(ConfigurationError, match="state_url"):
        result.get(timeout_s=0.1)


# ----------------------------------------------------------------- dedupe


def test_dedupe_skips_at_push(make: Make) -> None:
    calls: list[int] = []

    def work(x: int) -> int:
        calls.append(x)
        return x * 10

    b = make(work, dedupe_ttl_s=60)
    b.consume()
    first = b.push(4)
    assert first.get(timeout_s=20) == 40
    assert wait_for(lambda: b.push(4).deduplicated, 10)  # once the mark is written
    second = b.push(4)
    assert second.deduplicated
    assert second.task_id == first.task_id
    assert second.get(timeout_s=5) == 40
    by_id = b.push_with(PushOptions(task_id=unique_name("id")), 9)
    assert by_id.get(timeout_s=20) == 90
    assert wait_for(lambda: b.push_with(PushOptions(task_id=by_id.task_id), 9).deduplicated, 10)
    assert b.wait_until_idle(timeout_s=20)
    assert sorted(calls) == [4, 9]


def test_dedupe_skips_at_consume(make: Make) -> None:
    calls: list[int] = []

    def work(x: int) -> int:
        calls.append(x)
        return x + 1

    b = make(work, dedupe_ttl_s=60, concurrent_num=1)
    first, second = b.push(8), b.push(8)  # both sent: nothing succeeded yet
    assert not first.deduplicated and not second.deduplicated
    b.consume()
    assert first.get(timeout_s=20) == 9
    assert second.get(timeout_s=20) == 9
    assert calls == [8]


def test_failed_task_does_not_block_a_later_push(make: Make) -> None:
    fail = [True]

    def work(x: int) -> int:
        if fail[0]:
            raise RuntimeError("not yet")
        return x

    b = make(work, dedupe_ttl_s=60, max_retries=0)
    b.consume()
    with pytest.raises(TaskFailed):
        b.push(6).get(timeout_s=20)
    fail[0] = False
    later = b.push(6)
    assert not later.deduplicated
    assert later.get(timeout_s=20) == 6


# ----------------------------------------------------------------- pause


def test_pause_and_resume_in_process(make: Make) -> None:
    b = make(lambda x: x)
    b.consume()
    assert b.push(1).get(timeout_s=20) == 1
    b.pause()
    assert b.is_paused()
    gevent.sleep(1.0)  # the promise: no call starts later than 1 s after pause()
    held = b.push(2)
    with pytest.raises(ResultTimeout):
        held.get(timeout_s=1.0)
    assert held.status() == "pending"
    b.resume()
    assert not b.is_paused()
    assert held.get(timeout_s=5) == 2


# ----------------------------------------------------------------- connections


def test_a_thousand_waiters_share_a_bounded_number_of_connections() -> None:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    queue = unique_name("st")
    name = f"conn-{uuid.uuid4().hex[:8]}"
    opts = {"client_name": name, "pool_max_connections": 4}
    b = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=lambda x: x,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=REDIS_URL, broker_transport_options=opts),
            result_ttl_s=60,
            handle_signals=False,
            poll_timeout_s=0.2,
        )
    )
    admin = redis.Redis.from_url(REDIS_URL)
    try:
        results = b.push_many([(i,) for i in range(1000)])
        got: dict[int, Any] = {}

        def wait(i: int, r: AsyncResult[Any]) -> None:
            got[i] = r.get(timeout_s=60)

        waiters = [gevent.spawn(wait, i, r) for i, r in enumerate(results)]
        state = b._state
        assert isinstance(state, RedisStateStore)
        assert wait_for(lambda: len(state._watchers) == 1000, 20)
        named = [c for c in admin.client_list() if c.get("name") == name]
        # State store: its pool (4) + the listener (1); the broker's pool (4).
        assert len(named) <= 9
        assert state.connection_count() <= 5
        b.consume()
        gevent.joinall(waiters, timeout=60)
        assert got == {i: i for i in range(1000)}
        assert state.connection_count() <= 5
    finally:
        b.stop(timeout_s=5)
        cleanup_queues(b.broker, queue)
        delete_state_keys(queue)
        admin.close()


# ----------------------------------------------------------------- another process


def test_pause_and_resume_reach_a_worker_in_another_process(kind: str) -> None:
    if kind == "memory":
        pytest.skip("an in-process store is not shared with another process")
    queue = unique_name("st")
    options = booster_options(kind, queue)
    url = options["broker_config"].broker_url
    config = {"queue": queue, "kind": kind, "url": url, "state_url": REDIS_URL}

    def echo(x: int) -> int:
        return x

    b = new_booster(
        BoostOptions(
            queue_name=queue, consume_func=echo, handle_signals=False, result_ttl_s=60, **options
        )
    )
    cmd = python_cmd("-m", "tests.integration.state_worker", json.dumps(config))
    try:
        with running(cmd, stdout=subprocess.DEVNULL):
            assert b.push(1).get(timeout_s=30) == 1  # the worker runs
            b.pause()
            time.sleep(1.0)  # the promise: no call starts later than 1 s after pause()
            held = b.push(2)
            with pytest.raises(ResultTimeout):
                held.get(timeout_s=1.5)
            assert held.status() == "pending"
        # The flag outlives the worker: a new one does not start the held task either.
        with running(cmd, stdout=subprocess.DEVNULL):
            with pytest.raises(ResultTimeout):
                held.get(timeout_s=3)
            assert b.message_count() + (b.in_flight_count() or 0) == 1
            b.resume()
            assert held.get(timeout_s=5) == 2  # promised within 1 s; slack for a busy machine
    finally:
        b.stop(timeout_s=5)
        cleanup_queues(b.broker, queue)
        delete_state_keys(queue)


# ----------------------------------------------------------------- configuration


def test_rabbitmq_without_state_url_is_refused() -> None:
    base = {
        "queue_name": "never-used",
        "consume_func": lambda x: x,
        "broker_kind": BrokerKind.RABBITMQ,
        "handle_signals": False,
    }
    for feature in ({"result_ttl_s": 10.0}, {"dedupe_ttl_s": 10.0}):
        with pytest.raises(ConfigurationError, match="state_url"):
            new_booster(BoostOptions(**base, **feature))
    plain = new_booster(BoostOptions(**base))  # builds: never connects, needs no store
    with pytest.raises(ConfigurationError, match="state_url"):
        plain.pause()
    with pytest.raises(ConfigurationError, match="state_url"):
        plain.result("x")
    assert plain.push.__name__ == "push"


def test_a_caller_task_id_with_odd_characters_gets_its_result(make: Make) -> None:
    b = make(lambda x: x * 2)
    task_id = unique_name("id") + ' line\nbreak "quoted" ,[]'
    result = b.push_with(PushOptions(task_id=task_id), 21)
    assert result.task_id == task_id
    waiter = gevent.spawn(result.get)  # no timeout: only the notification can wake it
    try:
        assert wait_for(lambda: result.status() == "pending" and not waiter.dead, 5)
        b.consume()
        assert waiter.get(timeout=10) == 42
    finally:
        waiter.kill()


def test_redis_write_batch_keeps_odd_keys_values_and_ttls_whole() -> None:
    # A batch travels as sizes plus one concatenation: keys with separators, digits and
    # non-ASCII, values of any bytes (empty, CRLF, NUL, large), TTLs on and off, and more sets
    # than one script call carries must all land exactly.
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    queue = unique_name("wb")
    prefix = f"geboost:{queue}:"
    odd = {
        prefix + "a,1": b"",
        prefix + "12,3,4": b"\r\n\x00\xff",
        prefix + "é€ key": "é€".encode(),
        prefix + "big": b"v" * 100_000,
    }
    many = {f"{prefix}n{i}": b"%d" % i for i in range(1200)}
    settings = RedisSettings.from_options({})
    store = RedisStateStore(parse_target(REDIS_URL, settings, {}), settings)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        sets = [(k, v, 60.0) for k, v in odd.items()] + [(k, v, 0.0) for k, v in many.items()]
        store.write_batch(sets, [])
        for key, value in {**odd, **many}.items():
            assert client.get(key) == value, key
        assert 0 < client.pttl(prefix + "big") <= 60_000
        assert client.pttl(prefix + "n0") == -1  # no TTL asked
    finally:
        store.close()
        client.close()
        delete_state_keys(queue)


def test_redis_write_batch_loads_its_script_on_a_server_that_forgot_it(tmp_path: Any) -> None:
    # Batch writes run their script by SHA on a pooled connection: a restarted or flushed
    # server answers NOSCRIPT (nothing ran), and the store loads the script and writes again.
    if not os.path.exists(REDIS_SERVER):
        skip_or_fail(f"{REDIS_SERVER} is not installed")
    port = free_port()
    server = start_redis_server(str(tmp_path), port)
    url = f"redis://127.0.0.1:{port}"
    settings = RedisSettings.from_options({})
    store = RedisStateStore(parse_target(url, settings, {}), settings)
    client = redis.Redis.from_url(url)
    try:
        store.write_batch([("a", b"1", 0.0)], [])
        client.script_flush()
        store.write_batch([("b", b"2", 0.0)], [("geboost:done", "b")])
        assert client.mget("a", "b") == [b"1", b"2"]
    finally:
        store.close()
        client.close()
        stop_process(server)  # type: ignore[arg-type]

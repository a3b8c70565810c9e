"""The fleet: a rate limit shared by separate worker processes (``qps_scope="queue"``) and the
worker registry, on the real shared Redis (broker and state store).

Worker processes are ``tests.integration.fleet_worker``; each call pushes its start time
(``time.time()``, one machine, so one clock) to a Redis list that the test merges."""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis

from geboost import Booster, BoostOptions, BrokerConfig, BrokerKind, new_booster
from geboost.state import open_state_store
from geboost.state.keys import qps_key, workers_key
from tests.support import (
    cleanup_queues,
    port_open,
    python_cmd,
    running,
    skip_or_fail,
    stop_process,
    unique_name,
    wait_for,
)

REDIS_URL = "redis://127.0.0.1:6379"
QPS = 60


@pytest.fixture(autouse=True)
def _redis() -> None:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")


def noop(n: int) -> None:
    return None


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of this test; its messages, dead letters and ``geboost:<queue>:*`` keys are
    deleted after it."""
    name = unique_name("fleet")
    yield name
    producer = _booster(name)
    cleanup_queues(producer.broker, name)
    producer.broker.close()


def _booster(queue: str, **options: Any) -> Booster[Any, Any]:
    settings: dict[str, Any] = {
        "broker_kind": BrokerKind.REDIS,
        "broker_config": BrokerConfig(broker_url=REDIS_URL),
        "handle_signals": False,
        "poll_timeout_s": 0.2,
    }
    settings.update(options)
    return new_booster(BoostOptions(queue_name=queue, consume_func=noop, **settings))


def _worker(queue: str, **extra: Any) -> list[str]:
    config = {
        "queue": queue,
        "url": REDIS_URL,
        "qps_limit": QPS,
        "starts_key": f"geboost:{queue}:test-starts",
        **extra,
    }
    return python_cmd("-m", "tests.integration.fleet_worker", json.dumps(config))


def _starts(client: redis.Redis, queue: str) -> list[tuple[int, float]]:
    raw = client.lrange(f"geboost:{queue}:test-starts", 0, -1)
    pairs = [item.decode().split() for item in raw]
    return sorted((int(pid), float(at)) for pid, at in pairs)


def _busiest_second(times: list[float]) -> int:
    """The most starts in any 1-second window [t, t + 1)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


def _started(client: redis.Redis, queue: str) -> int:
    return int(client.llen(f"geboost:{queue}:test-starts"))


def test_three_worker_processes_share_one_qps_limit(queue: str) -> None:
    """3 processes, qps_limit=60 for the fleet: 1,200 starts (+- 1 %) in the first 20 s, and no
    1-second window with more than 63."""
    total = 1300  # about 21.7 s at 60/s: the first 20 s are counted
    producer = _booster(queue)
    producer.push_many([(i,) for i in range(total)])
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with ExitStack() as stack:
            procs = [stack.enter_context(running(_worker(queue))) for _ in range(3)]
            assert wait_for(lambda: _started(client, queue) >= total, 90, 0.2)
            for proc in procs:
                stop_process(proc)
        starts = _starts(client, queue)
    finally:
        client.close()
        producer.broker.close()
    times = sorted(at for _, at in starts)
    first_20_s = [at for at in times if at < times[0] + 20.0]
    print(f"fleet qps: {len(first_20_s)} starts in 20 s, busiest second {_busiest_second(times)}")
    assert len(starts) == total
    assert 1188 <= len(first_20_s) <= 1212, len(first_20_s)
    assert _busiest_second(times) <= 63
    per_process = Counter(pid for pid, at in starts if at < times[0] + 20.0)
    assert len(per_process) == 3 and min(per_process.values()) >= 100, per_process


def test_a_worker_joining_and_one_leaving_keep_the_fleet_within_the_limit(queue: str) -> None:
    total = 700  # about 11.7 s at 60/s
    producer = _booster(queue)
    producer.push_many([(i,) for i in range(total)])
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with running(_worker(queue)) as leaving, running(_worker(queue)) as staying:
            assert wait_for(lambda: _started(client, queue) >= 120, 30, 0.1)
            with running(_worker(queue)) as joining:
                assert wait_for(lambda: _started(client, queue) >= 300, 30, 0.1)
                stop_process(leaving)  # SIGTERM: a graceful stop, its unused slots are wasted
                assert leaving.returncode == 0
                assert wait_for(lambda: _started(client, queue) >= total, 60, 0.2)
                left_at = max(at for pid, at in _starts(client, queue) if pid == leaving.pid)
        starts = _starts(client, queue)
    finally:
        client.close()
        producer.broker.close()
    assert len(starts) == total
    print(f"join/leave: busiest second {_busiest_second([at for _, at in starts])}")
    assert _busiest_second([at for _, at in starts]) <= 63
    by_pid = Counter(pid for pid, _ in starts)
    assert by_pid[joining.pid] > 0 and by_pid[staying.pid] > 0
    # After the leaver's last start, the two others carried on at the fleet's rate.
    after = [at for _, at in starts if at > left_at]
    assert len(after) >= 100


def test_the_registry_lists_workers_of_every_process_until_they_stop_or_die(queue: str) -> None:
    here = _booster(queue)
    client = redis.Redis.from_url(REDIS_URL)
    config = {"worker_ttl_s": 3.0, "worker_refresh_s": 0.5, "qps_limit": 0}
    try:
        here.consume()
        with running(_worker(queue, **config), stdout=subprocess.DEVNULL) as there:
            assert wait_for(lambda: len(here.workers()) == 2, 30)
            listed = here.workers()
            assert sorted(w.pid for w in listed) == sorted([os.getpid(), there.pid])
            assert {w.queue_name for w in listed} == {queue}
            assert all(w.conn_num == 1 and w.concurrent_num == 50 for w in listed)
            assert all(w.last_seen >= w.started_at > 0 for w in listed)

            here.stop(timeout_s=5)  # leaves the registry at once
            assert [w.pid for w in here.workers()] == [there.pid]

            os.kill(there.pid, signal.SIGKILL)  # no goodbye: its entry lives out its TTL
            there.wait(timeout=10)
            assert [w.pid for w in here.workers()] == [there.pid]
            assert wait_for(lambda: here.workers() == [], 10)
        assert client.exists(f"geboost:{queue}:workers") == 0  # nothing left behind
    finally:
        here.stop(timeout_s=5)
        client.close()


def test_the_redis_store_books_contiguous_slots_and_leaves_no_key_behind(queue: str) -> None:
    store = open_state_store(
        REDIS_URL, broker_kind="redis", broker_config=BrokerConfig(broker_url=REDIS_URL)
    )
    assert store is not None
    client = redis.Redis.from_url(REDIS_URL)
    schedule, registry = qps_key(queue), workers_key(queue)
    try:
        assert store.book_slots(schedule, interval_s=1.0, count=2) == 0.0  # free: now
        assert 1.0 < store.book_slots(schedule, interval_s=1.0, count=1) <= 2.0  # after those
        assert 0 < client.pttl(schedule) <= 4000  # a second after the last booked slot

        store.put_member(registry, "short", b"1", ttl_s=0.3)
        store.put_member(registry, "long", b"2", ttl_s=30)
        assert set(store.members(registry)) == {"short", "long"}
        assert wait_for(lambda: store.members(registry) == {"long": b"2"}, 5)
        assert 0 < client.pttl(registry) <= 30_000
        assert store.remove_member(registry, "long")
        assert not store.remove_member(registry, "long")
        assert store.members(registry) == {}
        assert client.exists(registry, registry + ":expiry") == 0
    finally:
        client.close()


def test_a_rabbitmq_booster_shares_the_limit_and_registers_through_its_state_url() -> None:
    if not port_open("127.0.0.1", 5672):
        skip_or_fail("no RabbitMQ server answers on 127.0.0.1:5672")
    queue = unique_name("fleet")
    done: list[int] = []
    b = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=done.append,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(broker_url="127.0.0.1:5672"),
            state_url=REDIS_URL,
            qps_limit=50,
            qps_scope="queue",
            handle_signals=False,
            poll_timeout_s=0.2,
        )
    )
    client = redis.Redis.from_url(REDIS_URL)
    try:
        b.push_many([(i,) for i in range(20)])
        b.consume()
        assert wait_for(lambda: len(done) == 20, 30)
        assert [w.pid for w in b.workers()] == [os.getpid()]
        assert client.exists(qps_key(queue)) == 1  # the fleet's schedule is in the store
        b.stop(timeout_s=5)
        assert b.workers() == []
        assert sorted(done) == list(range(20))
    finally:
        b.stop(timeout_s=5)
        cleanup_queues(b.broker, queue)
        b.broker.close()
        keys = list(client.scan_iter(f"geboost:{queue}:*", 1000))
        if keys:
            client.delete(*keys)
        client.close()

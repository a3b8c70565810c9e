"""The fleet features without a server: slot booking and the registry in the in-process store,
``FleetBucket`` on a shared store and on one that fails, the registry of an in-process
booster, and the refusal of ``qps_scope="queue"`` without a store."""

from __future__ import annotations

import os

import pytest

from geboost import (
    BoostOptions,
    BrokerConfig,
    BrokerKind,
    ConfigurationError,
    StateStoreError,
    consumer_count,
    new_booster,
)
from geboost.log import queue_logger
from geboost.ratelimit import FleetBucket
from geboost.state import open_state_store
from geboost.state.memory import MemoryStateStore
from tests.support import free_port, memory_booster, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bookings_are_contiguous_and_idle_time_earns_no_credit() -> None:
    clock = FakeClock()
    store = MemoryStateStore(clock)
    assert store.book_slots("k", interval_s=0.1, count=3) == 0.0
    assert store.book_slots("k", interval_s=0.1, count=3) == pytest.approx(0.3)
    clock.now += 0.1
    assert store.book_slots("k", interval_s=0.1, count=1) == pytest.approx(0.5)
    clock.now += 60  # idle: the schedule restarts from now, no burst
    assert store.book_slots("k", interval_s=0.1, count=2) == 0.0
    assert store.book_slots("k", interval_s=0.1, count=2) == pytest.approx(0.2)
    assert store.book_slots("other", interval_s=0.1, count=2) == 0.0


def test_registry_members_expire_and_leave() -> None:
    clock = FakeClock()
    store = MemoryStateStore(clock)
    store.put_member("r", "a", b"1", ttl_s=1)
    store.put_member("r", "b", b"2", ttl_s=10)
    assert store.members("r") == {"a": b"1", "b": b"2"}
    clock.now += 2
    assert store.members("r") == {"b": b"2"}
    store.put_member("r", "b", b"3", ttl_s=10)  # a refresh replaces the info
    assert store.members("r") == {"b": b"3"}
    assert store.remove_member("r", "b")
    assert not store.remove_member("r", "b")
    assert store.members("r") == {}


def test_fleet_buckets_share_one_schedule_in_batches() -> None:
    clock = FakeClock()
    store = MemoryStateStore(clock)
    log = queue_logger("fleet-unit")
    a = FleetBucket(store, "q", 10, log, clock)  # batch: 0.2 s of 10/s = 2 slots
    b = FleetBucket(store, "q", 10, log, clock)
    assert a.batch == 2
    assert a.reserve() == 0.0  # a books 0.0 and 0.1
    assert b.reserve() == pytest.approx(0.2)  # b books 0.2 and 0.3
    assert a.reserve() == pytest.approx(0.1)
    assert a.reserve() == pytest.approx(0.4)  # a books 0.4 and 0.5
    clock.now += 60  # a had nothing to start: its stale slot is dropped, not used late
    assert a.reserve() == 0.0
    assert a.wasted == 1


def test_fleet_bucket_books_nothing_while_the_store_fails() -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    store = open_state_store(url, broker_kind="memory", broker_config=BrokerConfig())
    assert store is not None
    bucket = FleetBucket(store, "geboost:nowhere:qps", 60, queue_logger("fleet-unit"))
    assert bucket.reserve() is None
    with pytest.raises(StateStoreError):
        store.members("geboost:nowhere:workers")


def test_qps_scope_queue_on_rabbitmq_needs_a_state_url() -> None:
    with pytest.raises(ConfigurationError, match="state_url"):
        new_booster(
            BoostOptions(
                queue_name="fleet-unit",
                consume_func=print,
                broker_kind=BrokerKind.RABBITMQ,
                broker_config=BrokerConfig(broker_url="127.0.0.1:5672"),
                qps_limit=10,
                qps_scope="queue",
                handle_signals=False,
            )
        )


def test_an_in_process_booster_registers_while_it_consumes() -> None:
    done: list[int] = []
    b = memory_booster(done.append, qps_limit=50, qps_scope="queue", poll_timeout_s=0.1)
    assert b.workers() == []
    b.push_many([(i,) for i in range(10)])
    b.consume()
    try:
        assert wait_for(lambda: len(b.workers()) == 1 and len(done) == 10, 10)
        (me,) = b.workers()
        assert (me.pid, me.queue_name, me.qps_scope, me.qps_limit) == (
            os.getpid(),
            b.queue_name,
            "queue",
            50,
        )
        assert consumer_count(b._state, b.queue_name) == 1
    finally:
        b.stop(timeout_s=5)
    assert b.workers() == []
    assert sorted(done) == list(range(10))

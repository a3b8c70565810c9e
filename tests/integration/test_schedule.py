"""Periodic tasks with the real clock: an every-second job runs on every broker (memory, Redis,
RabbitMQ with ``state_url`` = the shared Redis), and three schedulers in separate processes push
each tick of an every-second job exactly once.

Network brokers are skipped on a developer's machine without them and fail in CI. Every Redis
key a test makes carries its queue name and is deleted after it."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geboost import Booster, BoostOptions, BrokerConfig, BrokerKind, Scheduler, new_booster
from geboost.message import decode_task
from tests.support import (
    booster_options,
    cleanup_queues,
    delete_state_keys,
    drain,
    port_open,
    python_cmd,
    skip_or_fail,
    stop_process,
    unique_name,
    wait_for,
)

REDIS_URL = "redis://127.0.0.1:6379"


def _need_redis() -> None:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param != "memory":
        _need_redis()
    if request.param == "rabbitmq" and not port_open("127.0.0.1", 5672):
        skip_or_fail("no RabbitMQ server answers on 127.0.0.1:5672")
    return str(request.param)


def _ticks(task_ids: list[str]) -> list[int]:
    """The ticks (epoch ms) in scheduled task ids ``sched-<schedule>-<tick ms>``."""
    return [int(task_id.rsplit("-", 1)[1]) for task_id in task_ids]


def _assert_one_per_tick(ticks: list[int], interval_ms: int) -> None:
    assert len(set(ticks)) == len(ticks), f"a tick pushed twice: {sorted(ticks)}"
    ordered = sorted(ticks)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert set(gaps) <= {interval_ms}, f"a tick missing: {ordered}"


@pytest.fixture
def booster(kind: str) -> Iterator[Booster[Any, Any]]:
    queue = unique_name("sched")
    calls: list[int] = []

    def collect(n: int) -> None:
        calls.append(n)

    b = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=collect,
            handle_signals=False,
            poll_timeout_s=0.2,
            **booster_options(kind, queue),
        )
    )
    b.calls = calls  # type: ignore[attr-defined]
    yield b
    b.stop(timeout_s=5)
    cleanup_queues(b.broker, queue)
    b.broker.close()
    if kind != "memory":
        delete_state_keys(queue)


def test_an_every_second_job_runs(booster: Booster[Any, Any], log_lines: list[str]) -> None:
    calls: list[int] = booster.calls  # type: ignore[attr-defined]
    schedule = booster.every(1, 7)
    booster.consume()
    with Scheduler([booster]):
        assert wait_for(lambda: len(calls) >= 3, timeout_s=15)
    pushed = [
        line.split("pushed as task ")[1].split()[0]
        for line in log_lines
        if booster.queue_name in line and "pushed as task" in line
    ]
    assert booster.wait_until_idle(timeout_s=10)
    assert calls == [7] * len(pushed)
    assert all(task_id.startswith(f"sched-{schedule.identity}-") for task_id in pushed)
    _assert_one_per_tick(_ticks(pushed), 1000)


def test_three_scheduler_processes_push_each_tick_once(tmp_path: Path) -> None:
    _need_redis()
    queue = unique_name("sched3")
    config = json.dumps({"queue": queue, "url": REDIS_URL})
    outputs = [tmp_path / f"scheduler{i}.out" for i in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    reader = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=lambda n: n,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=REDIS_URL),
            handle_signals=False,
        )
    )
    broker = reader.broker
    try:
        for out in outputs:
            with out.open("wb") as sink:
                procs.append(
                    subprocess.Popen(
                        python_cmd("-m", "tests.integration.scheduler_proc", config),
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        all_started = wait_for(
            lambda: all(b"started" in out.read_bytes() for out in outputs), timeout_s=30
        )
        assert all_started, [out.read_text()[-2000:] for out in outputs]
        first = broker.count(queue)
        # 10 s of ticks with all three running (a bounded wait, not a sleep).
        assert wait_for(lambda: broker.count(queue) >= first + 10, timeout_s=30)
        assert all(proc.poll() is None for proc in procs)
        for proc in procs:
            stop_process(proc)
        assert [proc.returncode for proc in procs] == [0, 0, 0]
        receiver = broker.open_receiver(queue)
        try:
            total = broker.count(queue)
            got = drain(receiver, total, timeout_s=10)
            receiver.ack(got)
        finally:
            receiver.close()
        assert len(got) == total >= 10
        ticks = _ticks([decode_task(d.body).task_id for d in got])
        _assert_one_per_tick(ticks, 1000)
        # the processes' own logs count the same pushes, none more
        pushers = [out.read_text().count("pushed as task") for out in outputs]
        assert sum(pushers) == len(ticks), pushers
        print(f"ticks pushed per scheduler process: {pushers}")
    finally:
        for proc in procs:
            stop_process(proc)
        cleanup_queues(broker, queue)
        broker.close()
        delete_state_keys(queue)


HOUR = 3600.0
T0 = 1_800_000_000.0  # a whole hour since the epoch (in 2027: the claims' TTLs are real)


def test_misfire_grace_on_the_broker_and_store(
    booster: Booster[Any, Any], log_lines: list[str]
) -> None:
    """Schedulers that come back after a tick (clock injected): within the grace one of them
    pushes it, once; beyond the grace it is skipped with one log line."""
    booster.every(HOUR, 1)
    assert Scheduler([booster]).run_pending(T0 + 30) == 1
    assert Scheduler([booster]).run_pending(T0 + 40) == 0
    assert Scheduler([booster], misfire_grace_s=60).run_pending(T0 + HOUR + 90) == 0
    assert Scheduler([booster], misfire_grace_s=60).run_pending(T0 + HOUR + 95) == 0
    assert wait_for(lambda: booster.message_count() == 1, timeout_s=5)
    skipped = [line for line in log_lines if booster.queue_name in line and "skipped" in line]
    assert len(skipped) == 1, skipped
    assert "missed by 90.0 s" in skipped[0]

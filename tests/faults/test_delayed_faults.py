"""Delayed tasks survive a SIGKILLed worker (issue 12): none lost, none run twice, and tasks
that came due while no worker ran start when one comes back.

Redis runs on a private redis-server (as in test_redis_faults); RabbitMQ on the shared server
(only the worker process is killed, never the broker). Workers are the fault tests' worker
processes. Three groups of delayed tasks: ``early`` due while the first worker runs, ``late``
due after it was killed, ``gap`` due while no worker runs at all; the kill comes once the early
ones are done and settled, so an exact count is owed: each task runs exactly once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from geboost import BoostOptions, BrokerConfig, BrokerKind, PushOptions, new_booster
from geboost.brokers.rabbitmq import RabbitMQBroker
from tests.faults.test_rabbitmq_faults import RABBIT, recorded
from tests.faults.test_rabbitmq_faults import qname as qname
from tests.faults.test_rabbitmq_faults import worker_cmd as rabbit_worker_cmd
from tests.faults.test_redis_faults import (
    PrivateRedis,
    _spawn,
    events,
    producer,
    worker_cmd,
)
from tests.faults.test_redis_faults import server as server
from tests.faults.test_redis_faults import workdir as workdir
from tests.support import running, stop_process, wait_for

pytestmark = [pytest.mark.faults]

EARLY_S, LATE_S, GAP_S = 1.0, 7.0, 9.0
PER_GROUP = 100


def _groups() -> dict[str, tuple[float, range]]:
    return {
        "early": (EARLY_S, range(0, PER_GROUP)),
        "late": (LATE_S, range(PER_GROUP, 2 * PER_GROUP)),
        "gap": (GAP_S, range(2 * PER_GROUP, 3 * PER_GROUP)),
    }


def _push_groups(push: Any) -> float:
    """Push every group; returns when the last one is due."""
    pushed_at = time.time()
    for countdown_s, numbers in _groups().values():
        for i in numbers:
            push(PushOptions(countdown_s=countdown_s), i)
    return pushed_at + GAP_S


@pytest.mark.redis
def test_redis_sigkill_while_delayed_tasks_wait(
    server: PrivateRedis,
    workdir: Path,
) -> None:
    queue = f"fault-delay-{uuid.uuid4().hex[:8]}"
    prod = producer(queue, server.url)
    last_due = _push_groups(lambda opts, i: prod.push_with(opts, i, 0.0))
    first, second = workdir / "first.txt", workdir / "second.txt"
    early = set(_groups()["early"][1])
    ctx, log = _spawn(worker_cmd(queue, server.url, first), workdir / "first.log")
    with log, ctx as w1:
        assert wait_for(lambda: _done(first) == early and prod.in_flight_count() == 0, 30)
        stop_process(w1, signal.SIGKILL)
    assert time.time() < last_due - 1, "the kill came too late for the test to mean anything"
    assert prod.message_count() == 2 * PER_GROUP  # the rest still waits, delayed, in Redis
    assert wait_for(lambda: time.time() > last_due + 0.5, GAP_S + 5)  # all due, no worker
    ctx, log = _spawn(worker_cmd(queue, server.url, second), workdir / "second.log")
    with log, ctx as w2:
        assert wait_for(lambda: len(_done(first, second)) == 3 * PER_GROUP, 30)
        assert wait_for(lambda: prod.in_flight_count() == 0, 10)
        assert w2.poll() is None
    seen = events(first, second)
    assert all(seen[("start", i)] == 1 and seen[("done", i)] == 1 for i in range(3 * PER_GROUP))
    assert _done(first) == early
    assert prod.message_count() == 0
    prod.stop()


def _done(*records: Path) -> set[int]:
    return {i for (kind, i) in events(*records) if kind == "done"}


_MARKERS = (-1, -2)


def _rabbit_noop(i: int) -> None:
    pass


@pytest.mark.rabbitmq
def test_rabbitmq_sigkill_while_delayed_tasks_wait(qname: str, tmp_path: Path) -> None:
    prod = new_booster(
        BoostOptions(
            queue_name=qname,
            consume_func=_rabbit_noop,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(broker_url=RABBIT),
            handle_signals=False,
        )
    )
    record = tmp_path / "ran.txt"
    early = list(_groups()["early"][1])
    try:
        last_due = _push_groups(prod.push_with)
        cmd = rabbit_worker_cmd(qname, RABBIT, record, 20, 0.0)
        with open(tmp_path / "a.log", "wb") as err, running(cmd, cwd=_root(), stderr=err) as w1:
            assert wait_for(lambda: sorted(recorded(record)) == early, 30), recorded(record)
            # RabbitMQ does not tell what is unacked. A first marker may be fetched by the very
            # fetch during which the last early call ended; a second one pushed after the first
            # ran is fetched in a later step, after the puller sent every earlier ack.
            for marker in _MARKERS:
                prod.push(marker)
                assert wait_for(lambda m=marker: m in recorded(record), 30), _tail(tmp_path)
            os.kill(w1.pid, signal.SIGKILL)
            w1.wait(timeout=10)
        assert time.time() < last_due - 1, "the kill came too late for the test to mean anything"
        assert wait_for(lambda: time.time() > last_due + 0.5, GAP_S + 5)
        with open(tmp_path / "b.log", "wb") as err, running(cmd, cwd=_root(), stderr=err) as w2:
            assert wait_for(lambda: len(recorded(record)) >= 3 * PER_GROUP + 2, 30), _tail(tmp_path)
            assert wait_for(lambda: prod.message_count() == 0, 10)
            os.kill(w2.pid, signal.SIGTERM)
            assert w2.wait(timeout=40) == 0
        # The markers' own acks may have died with the worker: they are not among the tasks.
        counts = Counter(i for i in recorded(record) if i not in _MARKERS)
        assert counts == Counter(range(3 * PER_GROUP)), _tail(tmp_path)  # each exactly once
    finally:
        prod.stop(timeout_s=1)
        cleaner = RabbitMQBroker(BrokerConfig(broker_url=RABBIT))
        for name in cleaner.delay_queue_names(qname, [EARLY_S, LATE_S, GAP_S]):
            cleaner.delete_queue(name)
        cleaner.close()


def _root() -> Path:
    return Path(__file__).resolve().parents[2]


def _tail(tmp_path: Path) -> str:
    return "".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("*.log")))

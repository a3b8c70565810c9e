"""RabbitMQ faults: a killed worker, a cut network, pushes to a dead broker, long calls.

The shared RabbitMQ on 127.0.0.1:5672 is never stopped: the network is cut with a TCP proxy
the test owns (``tcp_proxy.py``), workers are processes started and stopped by PID.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from geboost import (
    BoostOptions,
    BrokerConfig,
    BrokerKind,
    PublishError,
    new_booster,
)
from geboost.brokers.rabbitmq import RabbitMQBroker
from tests.faults.tcp_proxy import TcpProxy
from tests.support import (
    cleanup_queues,
    free_port,
    port_open,
    python_cmd,
    running,
    skip_or_fail,
    unique_name,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.faults]

RABBIT = "127.0.0.1:5672"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def qname() -> Iterator[str]:
    if not port_open("127.0.0.1", 5672):
        skip_or_fail("no RabbitMQ server answers on 127.0.0.1:5672")
    name = unique_name("test-rmqfault")
    yield name
    cleaner = RabbitMQBroker(BrokerConfig(broker_url=RABBIT))
    cleanup_queues(cleaner, name)
    cleaner.close()


def _noop(i: int) -> None:
    pass


def producer(queue: str, url: str = RABBIT, **kw: Any) -> Any:
    return new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=_noop,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(broker_url=url),
            handle_signals=False,
            **kw,
        )
    )


def recorded(path: Path) -> list[int]:
    if not path.exists():
        return []
    # A worker may be writing while we read: an unfinished last line is not counted yet.
    return [int(line) for line in path.read_text().split("\n")[:-1] if line]


def worker_cmd(queue: str, url: str, record: Path, concurrent: int, sleep_s: float) -> list[str]:
    return python_cmd(
        "-m",
        "tests.faults.rabbitmq_worker",
        queue,
        url,
        str(record),
        str(concurrent),
        str(sleep_s),
        "1.0",
    )


# ---------------------------------------------------------------- 1. worker killed
def test_sigkilled_worker_loses_nothing(qname: str, tmp_path: Path) -> None:
    total = 2000
    record = tmp_path / "ran.txt"
    p = producer(qname)
    p.push_many([(i,) for i in range(total)])
    cmd = worker_cmd(qname, RABBIT, record, 200, 0.3)
    with open(tmp_path / "a.log", "wb") as err, running(cmd, cwd=ROOT, stderr=err) as first:
        assert wait_for(lambda: len(recorded(record)) >= 300 or first.poll() is not None, 60)
        assert first.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    done_by_first = len(recorded(record))
    assert done_by_first < total  # killed mid-run: 200 calls were in flight, more unstarted
    with open(tmp_path / "b.log", "wb") as err, running(cmd, cwd=ROOT, stderr=err) as second:
        assert wait_for(lambda: set(recorded(record)) >= set(range(total)), 90, 0.2), (
            tmp_path / "b.log"
        ).read_text()[-3000:]
        assert second.poll() is None
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(timeout=40) == 0
    ran = recorded(record)
    lost = set(range(total)) - set(ran)
    assert lost == set()
    assert p.message_count() == 0
    print(f"killed after {done_by_first} recorded; duplicates {len(ran) - total}; lost 0")
    p.stop(timeout_s=1)


# ---------------------------------------------------------------- 2. network cut
def test_network_cut_longer_than_reconnect_interval(qname: str, tmp_path: Path) -> None:
    total = 600
    record = tmp_path / "ran.txt"
    log = tmp_path / "worker.log"
    p = producer(qname)
    p.push_many([(i,) for i in range(total)])
    with (
        TcpProxy(5672) as proxy,
        open(log, "wb") as err,
        running(worker_cmd(qname, proxy.url, record, 50, 0.2), cwd=ROOT, stderr=err) as worker,
    ):
        assert wait_for(lambda: len(recorded(record)) >= 100, 60)
        proxy.sever()
        cut_at = len(recorded(record))
        # The proxy refuses meanwhile: wait until a puller failed to reconnect 3 times, so the
        # cut lasted more than 3 reconnect intervals of 1 s.
        assert wait_for(lambda: log.read_text().count("puller 0 could not reconnect") >= 3, 30)
        assert worker.poll() is None
        during_cut = len(recorded(record)) - cut_at
        proxy.restore()
        assert wait_for(lambda: set(recorded(record)) >= set(range(total)), 60, 0.2), (
            log.read_text()[-3000:]
        )
        assert worker.poll() is None  # resumed by itself, never exited
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
    text = log.read_text()
    assert "lost its broker connection" in text
    assert "could not reconnect" in text  # it kept trying while the network was cut
    assert "reconnected; resuming" in text
    ran = recorded(record)
    assert set(range(total)) - set(ran) == set()
    assert p.message_count() == 0
    print(f"cut at {cut_at}, {during_cut} finished during the cut, duplicates {len(ran) - total}")
    p.stop(timeout_s=1)


# ---------------------------------------------------------------- 3. push to a dead broker
@pytest.mark.parametrize("how", ["closed port", "severed proxy"])
def test_push_retries_then_raises(qname: str, how: str, log_lines: list[str]) -> None:
    proxy = TcpProxy(5672)
    proxy.start()
    try:
        url = f"127.0.0.1:{free_port()}" if how == "closed port" else proxy.url
        b = producer(qname, url, push_retries=2, push_retry_interval_s=0.3)
        if how == "severed proxy":
            b.push(0)  # connected through the proxy first
            proxy.sever()
        started = time.monotonic()
        with pytest.raises(PublishError) as info:
            b.push(1)
        waited_s = time.monotonic() - started
        assert waited_s >= 0.6  # two pauses of 0.3 s between three attempts
        assert "3 attempt(s)" in str(info.value)
        warnings = [line for line in log_lines if "push to" in line and "failed (attempt" in line]
        assert len(warnings) == 2
        assert any("giving up" in line for line in log_lines)
        if how == "severed proxy":
            proxy.restore()
            b.push(2)  # the broker reconnects on the next call
            assert b.message_count() == 2
        b.stop(timeout_s=1)
    finally:
        proxy.close()


# ---------------------------------------------------------------- 4. long calls, heartbeats
def test_long_calls_do_not_cost_the_connection(qname: str, log_lines: list[str]) -> None:
    calls = 200
    running_now = [0]
    peak = [0]
    ran: list[int] = []

    def block(i: int) -> None:
        running_now[0] += 1
        peak[0] = max(peak[0], running_now[0])
        gevent.sleep(5.0)  # > two heartbeat intervals of 2 s
        running_now[0] -= 1
        ran.append(i)

    b = new_booster(
        BoostOptions(
            queue_name=qname,
            consume_func=block,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(
                broker_url=RABBIT,
                broker_transport_options={"heartbeat_s": 2, "prefetch_count": calls},
            ),
            conn_num=1,
            concurrent_num=calls,
            handle_signals=False,
        )
    )
    try:
        b.push_many([(i,) for i in range(calls)])
        b.consume()
        assert wait_for(lambda: len(ran) == calls, 60)
        assert b.wait_until_idle(timeout_s=10)
        assert peak[0] == calls  # all 200 blocked at once
        assert sorted(ran) == list(range(calls))  # each ran once: nothing was redelivered
        assert b.message_count() == 0
        gevent.sleep(5)  # idle with the pool empty: heartbeats still flow
        b.push(calls)
        assert wait_for(lambda: len(ran) == calls + 1, 10)
    finally:
        b.stop(timeout_s=5)
    trouble = [
        line
        for line in log_lines
        if "lost its broker connection" in line or "reconnect" in line or "lost while idle" in line
    ]
    assert trouble == []

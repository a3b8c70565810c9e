"""Redis faults: a SIGKILLed worker, Redis stopped or crashed under a worker, pushes while Redis
is down, and a long call next to a consumer that recovers dead ones.

Each test starts its own ``redis-server`` on a free port (append-only file on, files in a
temporary directory) and stops it by PID; the shared server on 6379 is never touched. Workers
are processes (``redis_worker.py``) started and stopped by PID. Measurements are printed (run
with ``-s`` to see them); assertions are about behaviour, with generous time bounds only so
that a broken build fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from geboost import Booster, BoostOptions, BrokerConfig, BrokerKind, PublishError, new_booster
from geboost.brokers.redis import held_key, leases_key
from geboost.message import encode, make_task
from tests.support import (
    REDIS_SERVER,
    free_port,
    python_cmd,
    running,
    skip_or_fail,
    start_redis_server,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
# Short leases so that the tests are quick: a dead consumer's messages come back within
# lease + recovery interval = 1.25 s.
FAST_LEASE = {"heartbeat_interval_s": 0.2, "lease_timeout_s": 1.0, "recovery_interval_s": 0.25}
RECOVERY_BOUND_S = 1.25


class PrivateRedis:
    """A redis-server this test owns, restartable on the same port with the same files."""

    def __init__(self, directory: str, *extra: str) -> None:
        self.directory = directory
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_redis_server(self.directory, self.port, *self.extra)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@pytest.fixture
def workdir() -> Iterator[Path]:
    if not os.path.exists(REDIS_SERVER):
        skip_or_fail(f"{REDIS_SERVER} is not installed")
    with tempfile.TemporaryDirectory(prefix="geboost-redis-fault-") as path:
        yield Path(path)


@pytest.fixture
def server(workdir: Path) -> Iterator[PrivateRedis]:
    srv = PrivateRedis(str(workdir))
    srv.start()
    yield srv
    srv.stop()


def _task(i: int, sleep_s: float) -> None:
    pass


def producer(queue: str, url: str, **kw: Any) -> Booster[Any, Any]:
    return new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=_task,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=url, broker_transport_options=FAST_LEASE),
            handle_signals=False,
            **kw,
        )
    )


def worker_cmd(queue: str, url: str, record: Path, **config: Any) -> list[str]:
    config = {
        "queue": queue,
        "url": url,
        "record": str(record),
        "concurrent_num": 200,
        "conn_num": 2,
        "reconnect_interval_s": 1.0,
        "transport": FAST_LEASE,
        **config,
    }
    return python_cmd("-m", "tests.faults.redis_worker", json.dumps(config))


def events(*records: Path) -> Counter[tuple[str, int]]:
    """(``start`` | ``done``, task number) -> how many times, over the record files."""
    seen: Counter[tuple[str, int]] = Counter()
    for path in records:
        if path.exists():
            # A worker may be writing while we read: the last line can be incomplete, and
            # counts only once its newline is there.
            for line in path.read_text().split("\n")[:-1]:
                kind, number, _pid = line.split()
                seen[(kind, int(number))] += 1
    return seen


def done(*records: Path) -> set[int]:
    return {i for (kind, i) in events(*records) if kind == "done"}


_NO_RECONNECT = "puller 0 could not reconnect"


def _log_count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text)


def _lease_expiry_by_pid(client: Any, queue: str) -> dict[int, float]:
    """Per worker process: the earliest lease expiry (server ms) of its consumers."""
    out: dict[int, float] = {}
    for member, expiry_ms in client.zrange(leases_key(queue), 0, -1, withscores=True):
        pid = int(member.decode().split(":")[1])
        out[pid] = min(out.get(pid, expiry_ms), expiry_ms)
    return out


def _spawn(cmd: list[str], log: Path) -> Any:
    out = open(log, "ab")
    return running(cmd, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT), out


def test_sigkilled_worker_loses_nothing(server: PrivateRedis, workdir: Path) -> None:
    queue = f"fault-kill-{uuid.uuid4().hex[:8]}"
    total = 2000
    prod = producer(queue, server.url)
    prod.push_many([(i, 0.5) for i in range(total)])
    first, second = workdir / "first.txt", workdir / "second.txt"
    ctx, log = _spawn(worker_cmd(queue, server.url, first), workdir / "first.log")
    with log, ctx as w1:
        assert wait_for(lambda: len(done(first)) >= 300, 60), "first worker made no progress"
        stop_process(w1, signal.SIGKILL)
    killed_at = time.monotonic()
    held_by_dead = prod.in_flight_count()
    done_by_first = len(done(first))
    client = server.client()
    dead_ids = [m.decode() for m in client.zrange(leases_key(queue), 0, -1)]
    recovered_after_s = -1.0
    ctx, log = _spawn(worker_cmd(queue, server.url, second), workdir / "second.log")
    with log, ctx as w2:
        if wait_for(lambda: sum(client.llen(held_key(queue, c)) for c in dead_ids) == 0, 30):
            recovered_after_s = time.monotonic() - killed_at
        finished = wait_for(
            lambda: (
                len(done(first, second)) == total
                and prod.message_count() == 0
                and prod.in_flight_count() == 0
            ),
            90,
        )
        assert w2.poll() is None
    lost = set(range(total)) - done(first, second)
    twice = sum(1 for (kind, _), n in events(first, second).items() if kind == "done" and n > 1)
    print(
        f"\n[fault 1] first worker finished {done_by_first} before SIGKILL, held {held_by_dead} "
        f"unfinished, back on the queue {recovered_after_s:.2f} s after the kill (lease 1 s + "
        f"recovery every 0.25 s); second worker finished the rest in "
        f"{time.monotonic() - killed_at:.1f} s; "
        f"lost={len(lost)} ran-twice={twice}"
    )
    assert not lost, f"lost tasks: {sorted(lost)[:20]}"
    assert finished
    assert held_by_dead and held_by_dead > 0  # the kill did leave messages held
    assert recovered_after_s > 0
    client.close()
    prod.stop()


@pytest.mark.parametrize("how", ["stopped", "crashed"])
def test_worker_survives_redis_going_away(workdir: Path, how: str) -> None:
    extra = ("--appendfsync", "always") if how == "crashed" else ()
    server = PrivateRedis(str(workdir), *extra)
    server.start()
    queue = f"fault-down-{uuid.uuid4().hex[:8]}"
    total = 1000
    record = workdir / "worker.txt"
    try:
        prod = producer(queue, server.url)
        prod.push_many([(i, 0.2) for i in range(total)])
        ctx, log = _spawn(
            worker_cmd(queue, server.url, record, concurrent_num=50), workdir / "worker.log"
        )
        with log, ctx as worker:
            assert wait_for(lambda: len(done(record)) >= 200, 60)
            server.stop(signal.SIGTERM if how == "stopped" else signal.SIGKILL)
            down_at = time.monotonic()
            done_before = len(done(record))
            # Down until a puller failed to reconnect twice (> 2 reconnect intervals of 1 s).
            assert wait_for(lambda: _log_count(workdir / "worker.log", _NO_RECONNECT) >= 2, 30)
            assert worker.poll() is None, "the worker exited while Redis was down"
            server.start()
            up_at = time.monotonic()
            finished = wait_for(
                lambda: (
                    len(done(record)) == total
                    and prod.message_count() == 0
                    and prod.in_flight_count() == 0
                ),
                90,
            )
            assert worker.poll() is None, "the worker exited"
        worker_log = (workdir / "worker.log").read_text()
        lost = set(range(total)) - done(record)
        twice = sum(1 for (k, _), n in events(record).items() if k == "done" and n > 1)
        print(
            f"\n[fault 2/{how}] {done_before} done when Redis went down for "
            f"{up_at - down_at:.1f} s; queue finished {time.monotonic() - up_at:.1f} s after "
            f"restart; lost={len(lost)} ran-twice={twice}"
        )
        assert not lost, f"lost tasks: {sorted(lost)[:20]}"
        assert finished
        assert "lost its broker connection" in worker_log and "reconnected" in worker_log
        prod.stop()
    finally:
        server.stop()


def test_worker_resumes_after_redis_restarts_empty(workdir: Path) -> None:
    """Redis comes back WITHOUT its data: what it held is gone with it, but the worker goes on
    by itself and runs what is pushed afterwards."""
    server = PrivateRedis(str(workdir / "data"))
    os.mkdir(server.directory)
    server.start()
    queue = f"fault-wipe-{uuid.uuid4().hex[:8]}"
    record = workdir / "worker.txt"
    try:
        prod = producer(queue, server.url)
        prod.push_many([(i, 0.2) for i in range(300)])
        ctx, log = _spawn(
            worker_cmd(queue, server.url, record, concurrent_num=20), workdir / "worker.log"
        )
        with log, ctx as worker:
            assert wait_for(lambda: len(done(record)) >= 40, 60)
            server.stop(signal.SIGKILL)
            shutil.rmtree(server.directory)
            os.mkdir(server.directory)
            # Down until the worker noticed: it must come back by itself, not by luck.
            assert wait_for(lambda: _log_count(workdir / "worker.log", _NO_RECONNECT) >= 1, 30)
            server.start()
            prod.push_many([(i, 0.0) for i in range(1000, 1050)])
            resumed = wait_for(lambda: set(range(1000, 1050)) <= done(record), 60)
            assert worker.poll() is None, "the worker exited"
        assert resumed
        prod.stop()
    finally:
        server.stop()


def test_push_while_redis_down_retries_then_raises(workdir: Path, log_lines: list[str]) -> None:
    server = PrivateRedis(str(workdir))
    queue = f"fault-push-{uuid.uuid4().hex[:8]}"
    prod = producer(queue, server.url, push_retries=2, push_retry_interval_s=0.3)
    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        prod.push(1, 0.0)
    took_s = time.monotonic() - started
    print(f"\n[fault 3] push with Redis down raised PublishError after {took_s:.2f} s")
    assert queue in str(info.value)
    errors = [line for line in log_lines if "ERROR" in line and queue in line]
    retries = [line for line in log_lines if "WARNING" in line and "retrying" in line]
    assert len(errors) == 1 and len(retries) == 2
    # About push_retries x push_retry_interval_s: it waited, and redis-py did not add its own
    # retries with backoff (>= 1 s each) on top. A loose sanity bound, not a speed target.
    assert 0.6 <= took_s < 3.0
    with pytest.raises(PublishError) as batch:
        prod.push_many([(i, 0.0) for i in range(10)])
    assert batch.value.accepted == 0
    server.start()  # the same booster works again once Redis is back
    try:
        prod.push(2, 0.0)
        assert prod.message_count() == 1
    finally:
        prod.stop()
        server.stop()


def test_long_call_on_live_worker_runs_once(server: PrivateRedis, workdir: Path) -> None:
    queue = f"fault-long-{uuid.uuid4().hex[:8]}"
    long_s = 3.2 * RECOVERY_BOUND_S
    prod = producer(queue, server.url)
    records = [workdir / "a.txt", workdir / "b.txt"]
    contexts = [
        _spawn(worker_cmd(queue, server.url, rec, concurrent_num=5), rec.with_suffix(".log"))
        for rec in records
    ]
    client = server.client()
    try:
        with contexts[0][1], contexts[1][1], contexts[0][0] as a, contexts[1][0] as b:
            prod.push(0, long_s)
            assert wait_for(lambda: events(*records)[("start", 0)] == 1, 30)
            # A consumer that died holding a message: the other live worker must bring it
            # back while the long call goes on, proving recovery runs next to it.
            client.zadd(leases_key(queue), {"ghost:1:dead": 0})
            client.lpush(held_key(queue, "ghost:1:dead"), encode(make_task((1, 0.0), {})))
            prod.push_many([(i, 0.05) for i in range(2, 40)])
            assert wait_for(lambda: {0, 1} <= done(*records), 60)
            # Would a late redelivery happen? Wait until both live workers renewed their leases
            # 2 x RECOVERY_BOUND_S further (by the server's clock): time enough, both alive.
            start = _lease_expiry_by_pid(client, queue)
            assert {a.pid, b.pid} <= set(start)  # both consumers were live and renewing leases
            later = {pid: start[pid] + 2 * RECOVERY_BOUND_S * 1000 for pid in (a.pid, b.pid)}
            assert wait_for(
                lambda: all(
                    _lease_expiry_by_pid(client, queue).get(pid, 0) >= expiry_ms
                    for pid, expiry_ms in later.items()
                ),
                30,
            )
            seen = events(*records)
            assert a.poll() is None and b.poll() is None
        print(
            f"\n[fault 4] a {long_s:.1f} s call (lease 1 s, recovery every 0.25 s) started "
            f"{seen[('start', 0)]} time(s); the dead consumer's message ran {seen[('done', 1)]}"
        )
        assert seen[("start", 0)] == 1 and seen[("done", 0)] == 1
        assert seen[("done", 1)] == 1  # recovered once, never lost, never run twice
        assert done(*records) == set(range(40))
    finally:
        client.close()
        prod.stop()


# ---------------------------------------------------------------- leases (issue 8, case 4)
OUTAGE_LEASE = {"heartbeat_interval_s": 0.5, "lease_timeout_s": 2.0, "recovery_interval_s": 0.5}


def _started_once(records: list[Path], total: int) -> tuple[list[int], set[int]]:
    """Tasks started more than once, and tasks not finished exactly once."""
    seen = events(*records)
    twice = sorted(i for i in range(total) if seen[("start", i)] > 1)
    not_once = {i for i in range(total) if seen[("done", i)] != 1}
    return twice, not_once


def test_outage_longer_than_the_lease_runs_no_call_twice(workdir: Path) -> None:
    """Redis stopped (its append-only file keeps everything) for twice the lease while two live
    workers run long calls: when it is back, neither takes the other for dead."""
    server = PrivateRedis(str(workdir))
    server.start()
    queue = f"fault-outage-{uuid.uuid4().hex[:8]}"
    total, call_s, outage_s = 80, 12.0, 4.5
    records = [workdir / "a.txt", workdir / "b.txt"]
    try:
        prod = producer(queue, server.url)
        prod.push_many([(i, call_s) for i in range(total)])
        spawned = [
            _spawn(
                worker_cmd(
                    queue,
                    server.url,
                    rec,
                    concurrent_num=total // 2,
                    reconnect_interval_s=0.5,
                    transport=OUTAGE_LEASE,
                ),
                rec.with_suffix(".log"),
            )
            for rec in records
        ]
        with spawned[0][1], spawned[1][1], spawned[0][0] as a, spawned[1][0] as b:
            started = lambda: sum(1 for (k, _) in events(*records) if k == "start")  # noqa: E731
            assert wait_for(lambda: started() == total, 30), "the workers did not take all"
            server.stop(signal.SIGTERM)  # SHUTDOWN: the append-only file has every write
            time.sleep(outage_s)  # the outage itself, longer than the 2 s lease
            server.start()
            finished = wait_for(lambda: len(done(*records)) == total, 60)
            assert a.poll() is None and b.poll() is None, "a worker exited"
        twice, not_once = _started_once(records, total)
        logs = "".join(rec.with_suffix(".log").read_text() for rec in records)
        print(
            f"\n[fault 5] Redis down {outage_s} s (lease 2 s) under {total} calls of "
            f"{call_s} s on two workers: started twice {len(twice)}, "
            f"not finished exactly once {len(not_once)}"
        )
        assert twice == [], f"started twice after the outage: {twice[:20]}"
        assert finished and not_once == set()
        assert "back on the queue" not in logs  # nobody was declared dead
        assert prod.message_count() == 0 and prod.in_flight_count() == 0
        prod.stop()
    finally:
        server.stop()


def test_workers_with_different_leases_keep_each_others_messages(
    server: PrivateRedis, workdir: Path
) -> None:
    """A worker with a short lease next to one that beats every 5 s: the slow beater is alive
    and keeps what it holds."""
    queue = f"fault-mixed-{uuid.uuid4().hex[:8]}"
    fast = {"heartbeat_interval_s": 0.3, "lease_timeout_s": 1.5, "recovery_interval_s": 0.3}
    slow = {"heartbeat_interval_s": 5.0, "lease_timeout_s": 20.0, "recovery_interval_s": 5.0}
    total, call_s = 40, 6.0
    records = [workdir / "slow.txt", workdir / "fast.txt"]
    prod = producer(queue, server.url)

    def cmd(record: Path, concurrent_num: int, transport: dict[str, float]) -> list[str]:
        return worker_cmd(
            queue, server.url, record, concurrent_num=concurrent_num, transport=transport
        )

    def started() -> int:
        return sum(1 for (k, _) in events(*records) if k == "start")

    slow_ctx, slow_log = _spawn(cmd(records[0], total // 2, slow), workdir / "slow.log")
    with slow_log, slow_ctx as slow_worker:
        prod.push_many([(i, call_s) for i in range(total // 2)])
        assert wait_for(lambda: started() == total // 2, 30), "the slow worker took nothing"
        # The fast one has room for everything: whatever it recovers, it runs at once.
        fast_ctx, fast_log = _spawn(cmd(records[1], total, fast), workdir / "fast.log")
        with fast_log, fast_ctx as fast_worker:
            prod.push_many([(i, call_s) for i in range(total // 2, total)])
            finished = wait_for(lambda: len(done(*records)) == total, 60)
            assert slow_worker.poll() is None and fast_worker.poll() is None
    twice, not_once = _started_once(records, total)
    print(
        f"\n[fault 6] lease 1.5 s next to lease 20 s, {total} calls of {call_s} s: "
        f"started twice {len(twice)}"
    )
    assert twice == [], f"started twice: {twice[:20]}"
    assert finished and not_once == set()
    prod.stop()


def test_sigkilled_worker_next_to_a_live_one_is_back_within_its_lease(
    server: PrivateRedis, workdir: Path
) -> None:
    queue = f"fault-killed-{uuid.uuid4().hex[:8]}"
    total = 200
    records = [workdir / "victim.txt", workdir / "survivor.txt"]
    prod = producer(queue, server.url)
    client = server.client()
    survivor_ctx, survivor_log = _spawn(
        worker_cmd(queue, server.url, records[1], concurrent_num=5), workdir / "survivor.log"
    )
    with survivor_log, survivor_ctx as survivor:
        victim_ctx, victim_log = _spawn(
            worker_cmd(queue, server.url, records[0], concurrent_num=50), workdir / "victim.log"
        )
        with victim_log, victim_ctx as victim:
            prod.push_many([(i, 2.0) for i in range(total)])
            assert wait_for(lambda: len(done(records[0])) >= 50, 60), "victim made no progress"
            victim_ids = [
                m.decode()
                for m in client.zrange(leases_key(queue), 0, -1)
                if int(m.decode().split(":")[1]) == victim.pid
            ]
            stop_process(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        held = sum(client.llen(held_key(queue, c)) for c in victim_ids)
        back = wait_for(lambda: sum(client.llen(held_key(queue, c)) for c in victim_ids) == 0, 30)
        back_after_s = time.monotonic() - killed_at
        finished = wait_for(lambda: done(*records) == set(range(total)), 120)
        assert survivor.poll() is None
    bound_s = FAST_LEASE["lease_timeout_s"] + FAST_LEASE["recovery_interval_s"]
    print(
        f"\n[fault 7] {held} message(s) held by a SIGKILLed worker were back on the queue "
        f"{back_after_s:.2f} s after the kill (lease + recovery = {bound_s} s)"
    )
    assert victim_ids and held > 0 and back
    # Bound: lease + recovery interval, plus one heartbeat of the survivor (the dead worker's
    # broken promise may push leases by that much once) and room for a loaded machine.
    assert back_after_s < bound_s + FAST_LEASE["heartbeat_interval_s"] + 1.5
    assert finished
    client.close()
    prod.stop()

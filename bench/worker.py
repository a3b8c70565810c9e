"""One benchmark process: geboost publishing, a geboost consumer, or the bare-Pool ceiling.

    python bench/worker.py '<json spec>'

Started by ``bench/run.py``, one process per measurement. It prints one line
``RESULT {...}`` on stdout (geboost's log lines go to stderr). Every task is ``task(i)`` (the
typed task: ``task(i, datetime, Decimal, list[int])``) for ``i`` in ``range(n)``; the process
records which ``i`` ran, so the caller can check that exactly the expected set executed, none
failed and none was lost.

Modes (``spec["mode"]``):
- ``publish``: ``n`` single ``push(i)`` calls, the queue purged, then ``push_many`` of the same
  ``n`` calls, which stay queued for the next consumer (network brokers).
- ``fill``: ``push_many`` of ``n`` calls, left queued for a consumer process.
- ``consume``: one booster drains ``n`` tasks (pushed by this process first when ``prefill``,
  as the memory broker lives in-process). Timed from the first call's start to the last ack; the
  acks are counted by a thin wrapper around the broker's receivers (a registered broker kind).
- ``pool``: the ceiling, a bare ``gevent.pool.Pool(concurrent).spawn`` loop of the same calls.
- ``probe``: can a booster of this broker kind publish and count? (Is the broker available?)
- ``rpc``: one booster consumes (``concurrent`` greenlets, results on) and the same process
  makes ``n`` round trips ``push(i).get()`` one at a time; reports median and p99 in ms.

``spec["results"]``: results on (``result_ttl_s=60``) with the state store of the broker
(Redis: the broker's own; memory: ``memory://bench``; RabbitMQ: the Redis on 6379).
"""

from __future__ import annotations

# isort: off
import geboost  # noqa: F401  (first: patches the standard library, as a worker would)
# isort: on

import datetime as dt
import json
import os
import resource
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool

from geboost import (
    Booster,
    BoostOptions,
    BrokerConfig,
    Delivery,
    new_booster,
    register_broker,
)
from geboost.brokers.base import Broker, Receiver, get_broker_factory

BROKER_PORTS = {"redis": 6379, "rabbitmq": 5672}
STATE_URLS = {"memory": "memory://bench", "redis": "", "rabbitmq": "redis://127.0.0.1:6379"}


class Tally:
    """What ran: one flag per task index, call and failure counts, start and end times."""

    def __init__(self, n: int) -> None:
        self.seen = bytearray(n)
        self.calls = 0
        self.failed = 0
        self.first_start = 0.0
        self.last_start = 0.0
        self.last_end = 0.0
        self.first_started = Event()

    def start(self) -> None:
        now = time.perf_counter()
        if not self.calls:
            self.first_start = now
            self.first_started.set()
        self.calls += 1
        self.last_start = now

    def done(self, i: int) -> None:
        self.seen[i] += 1
        self.last_end = time.perf_counter()

    def check(self) -> dict[str, Any]:
        missing = self.seen.count(0)
        duplicates = sum(1 for c in self.seen if c > 1)
        return {
            "ok": missing == 0 and self.failed == 0,
            "missing": missing,
            "duplicates": duplicates,
            "failed": self.failed,
            "calls": self.calls,
        }


WHEN = dt.datetime(2026, 11, 28, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)
PRICE = Decimal("19.990")


def call_args(spec: dict[str, Any], i: int) -> tuple[Any, ...]:
    """The pushed arguments of task ``i``: ``(i,)``, or for the typed task
    ``(i, a datetime, a Decimal, a list[int])``."""
    if spec["task"] == "typed":
        return (i, WHEN, PRICE, [i, i + 1, i + 2])
    return (i,)


def make_task(spec: dict[str, Any], tally: Tally) -> Callable[..., None]:
    """The consuming function for ``spec["task"]``: noop, typed, sleep, http or http-fast."""
    kind = spec["task"]
    if kind == "noop":

        def noop(i: int) -> None:
            tally.start()
            tally.done(i)

        return noop
    if kind == "typed":

        def typed(i: int, when: dt.datetime, price: Decimal, ids: list[int]) -> None:
            tally.start()
            # A wrong value fails the call, so the run says FAILED.
            if type(when) is not dt.datetime or type(price) is not Decimal or ids[0] != i:
                raise TypeError(f"task {i} arrived as {when!r}, {price!r}, {ids!r}")
            tally.done(i)

        return typed
    if kind == "sleep":
        sleep_s = float(spec["sleep_s"])

        def sleep(i: int) -> None:
            tally.start()
            gevent.sleep(sleep_s)
            tally.done(i)

        return sleep
    if kind == "http-fast":
        return make_fast_fetch(spec, tally)
    base_url = spec["url"]

    def fetch(i: int) -> None:
        tally.start()
        try:
            with urllib.request.urlopen(f"{base_url}/{i}", timeout=30) as response:
                if response.read() != str(i).encode():
                    raise ValueError(f"wrong answer for task {i}")
        except Exception:
            tally.failed += 1
            raise
        tally.done(i)

    return fetch


def make_fast_fetch(spec: dict[str, Any], tally: Tally) -> Callable[..., None]:
    """The http task with geventhttpclient (the ``fast-http`` extra): one client, a pool of
    keep-alive connections as large as the booster's pool."""
    from geventhttpclient import HTTPClient  # type: ignore[import-not-found, unused-ignore]

    client = HTTPClient.from_url(
        spec["url"], concurrency=spec["concurrent"], connection_timeout=30, network_timeout=30
    )

    def fetch_fast(i: int) -> None:
        tally.start()
        try:
            response = client.get(f"/{i}")
            if response.read() != str(i).encode():
                raise ValueError(f"wrong answer for task {i}")
        except Exception:
            tally.failed += 1
            raise
        tally.done(i)

    return fetch_fast


# --------------------------------------------------------------------- counting acks
class AckCounter:
    """Acks seen by the receivers; ``done`` is set once ``expected`` were acked."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.acked = 0
        self.last_ack = 0.0
        self.done = Event()

    def add(self, count: int) -> None:
        self.acked += count
        self.last_ack = time.perf_counter()
        if self.acked >= self.expected:
            self.done.set()


class CountingReceiver:
    """Forwards everything to the real receiver; counts what ``ack`` settled."""

    def __init__(self, inner: Receiver, counter: AckCounter) -> None:
        self._inner = inner
        self._counter = counter

    def fetch(self, max_count: int, timeout_s: float) -> Sequence[Delivery]:
        return self._inner.fetch(max_count, timeout_s)

    def __getattr__(self, name: str) -> Any:
        # What the engine may read beyond the protocol (round_trip_fetch, send_ahead) is the
        # real receiver's, or absent as it is there.
        return getattr(self._inner, name)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._inner.ack(deliveries)
        self._counter.add(len(deliveries))

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        self._inner.requeue(deliveries)

    def keepalive(self) -> None:
        self._inner.keepalive()

    def reconnect(self) -> None:
        self._inner.reconnect()

    def close(self) -> None:
        self._inner.close()


class CountingBroker:
    """The real broker with counting receivers, registered as the kind ``bench-<kind>``."""

    def __init__(self, inner: Broker, counter: AckCounter) -> None:
        self._inner = inner
        self._counter = counter

    def publish(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        self._inner.publish(queue_name, bodies)

    def open_receiver(self, queue_name: str, **options: Any) -> Receiver:
        inner = self._inner.open_receiver(queue_name, **options)
        return CountingReceiver(inner, self._counter)

    def count(self, queue_name: str) -> int:
        return self._inner.count(queue_name)

    def in_flight(self, queue_name: str) -> int | None:
        return self._inner.in_flight(queue_name)

    def purge(self, queue_name: str) -> int:
        return self._inner.purge(queue_name)

    def close(self) -> None:
        self._inner.close()


# --------------------------------------------------------------------- measurements
def options(spec: dict[str, Any], func: Callable[..., None], kind: str) -> BoostOptions[Any, Any]:
    transport: dict[str, Any] = {}
    if spec["broker"] == "rabbitmq" and spec.get("prefetch"):
        transport["prefetch_count"] = spec["prefetch"]  # else geboost's default window
    state: dict[str, Any] = {}
    if spec.get("results"):
        # The counting kind (bench-<broker>) has no store of its own: name it.
        url = STATE_URLS[spec["broker"]] or "redis://" + spec.get("broker_url", "")
        state = {"result_ttl_s": 60.0, "state_url": url}
    return BoostOptions(
        queue_name=spec["queue"],
        consume_func=func,
        broker_kind=kind,
        concurrent_num=spec["concurrent"],
        qps_limit=spec.get("qps", 0),
        max_retries=0,  # a failed call goes to the dead-letter queue at once: the run FAILs
        broker_config=BrokerConfig(
            broker_url=spec.get("broker_url", ""), broker_transport_options=transport
        ),
        handle_signals=False,
        **state,
    )


def run_publish(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    booster: Booster[Any, Any] = new_booster(
        options(spec, make_task(spec, Tally(n)), spec["broker"])
    )
    booster.purge()  # connects, so that the first push is not charged with connecting
    started = time.perf_counter()
    for i in range(n):
        booster.push(i)
    single_s = time.perf_counter() - started
    queued_single = booster.message_count()
    booster.purge()
    started = time.perf_counter()
    booster.push_many([(i,) for i in range(n)])
    many_s = time.perf_counter() - started
    queued_many = booster.message_count()
    booster.stop()
    return {
        "ok": queued_single == n and queued_many == n,
        "queued_single": queued_single,
        "queued_many": queued_many,
        "push_per_s": n / single_s,
        "push_many_per_s": n / many_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_fill(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    booster: Booster[Any, Any] = new_booster(
        options(spec, make_task(spec, Tally(n)), spec["broker"])
    )
    booster.push_many([call_args(spec, i) for i in range(n)])
    queued = booster.message_count()
    booster.stop()
    return {"ok": queued == n, "queued": queued}


def run_consume(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    tally = Tally(n)
    counter = AckCounter(n)
    kind = "bench-" + spec["broker"]
    real_factory = get_broker_factory(spec["broker"])
    register_broker(kind, lambda config: CountingBroker(real_factory(config), counter))
    booster: Booster[Any, Any] = new_booster(options(spec, make_task(spec, tally), kind))
    if spec.get("prefill"):
        booster.push_many([call_args(spec, i) for i in range(n)])
    connections = 0
    booster.consume()
    try:
        if tally.first_started.wait(spec["timeout_s"]):
            gevent.sleep(0.01)  # the pullers' connections are open once a call ran
            connections = broker_connections(spec["broker"])
        counter.done.wait(spec["timeout_s"])
        engine = booster._engine
        if engine is not None and engine.recorder is not None:
            # Results on: timed until the last result is written, not only acked.
            engine.recorder.flush(spec["timeout_s"])
            counter.last_ack = max(counter.last_ack, time.perf_counter())
        connections = max(connections, broker_connections(spec["broker"]))
        leftover = booster.message_count()
    finally:
        booster.stop(timeout_s=10)
    elapsed_s = counter.last_ack - tally.first_start
    starts_s = tally.last_start - tally.first_start
    checked = tally.check()
    checked["ok"] = checked["ok"] and counter.acked >= n  # and every one acknowledged
    return {
        **checked,
        "acked": counter.acked,
        "leftover": leftover,
        "elapsed_s": elapsed_s,
        "calls_done_s": tally.last_end - tally.first_start,  # without the wait for the last ack
        "rate_per_s": n / elapsed_s if elapsed_s > 0 else 0.0,
        "start_rate_per_s": (tally.calls - 1) / starts_s if starts_s > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "connections": connections,
    }


def run_pool(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    tally = Tally(n)
    task = make_task(spec, tally)
    pool = Pool(spec["concurrent"])
    for i in range(n):
        pool.spawn(task, *call_args(spec, i))
    pool.join()
    elapsed_s = tally.last_end - tally.first_start
    return {
        **tally.check(),
        "elapsed_s": elapsed_s,
        "rate_per_s": n / elapsed_s if elapsed_s > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "connections": 0,
    }


def run_probe(spec: dict[str, Any]) -> dict[str, Any]:
    probe = options({**spec, "task": "noop"}, make_task(spec, Tally(1)), spec["broker"])
    booster: Booster[Any, Any] = new_booster(probe.replace(push_retries=0))
    try:
        booster.push(0)
        ok = booster.message_count() == 1
        booster.purge()
    finally:
        booster.stop()
    return {"ok": ok}


def run_rpc(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    tally = Tally(n)
    booster: Booster[Any, Any] = new_booster(
        options({**spec, "results": True}, make_task(spec, tally), spec["broker"])
    )
    booster.consume()
    times_ms: list[float] = []
    wrong = 0
    try:
        booster.push(0).get(timeout_s=30)  # warm: connections open, listener subscribed
        for i in range(n):
            started = time.perf_counter()
            if booster.push(i).get(timeout_s=30) is not None:
                wrong += 1
            times_ms.append((time.perf_counter() - started) * 1000)
    finally:
        booster.stop(timeout_s=10)
    times_ms.sort()
    return {
        "ok": wrong == 0 and len(times_ms) == n,
        "median_ms": times_ms[len(times_ms) // 2],
        "p99_ms": times_ms[min(len(times_ms) - 1, int(len(times_ms) * 0.99))],
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------- process facts
def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def broker_connections(broker: str) -> int:
    """Established TCP connections from this process to the broker's port.

    The sockets this process owns (``/proc/self/fd``) matched by inode against the kernel's
    TCP table, so connections of other processes to the same shared server do not count.
    """
    port = BROKER_PORTS.get(broker)
    if port is None:
        return 0
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "publish": run_publish,
    "fill": run_fill,
    "consume": run_consume,
    "pool": run_pool,
    "probe": run_probe,
    "rpc": run_rpc,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    raise_open_files_limit()
    result = MODES[spec["mode"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Helpers shared by the integration and fault tests: free ports, waiting for a port, and
processes started by the test and always stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

IN_CI = bool(os.environ.get("CI"))

SESSION_TAG = f"gbt{uuid.uuid4().hex[:6]}"
"""In every queue name a test makes with ``unique_name``: at the end of the session,
tests/conftest.py fails the run if keys or queues carrying it are left on the shared brokers
(other developers' concurrent runs carry other tags, so they are never blamed)."""


def unique_name(prefix: str) -> str:
    """A queue name of this test session only: ``<prefix>-<session tag>-<random>``."""
    return f"{prefix}-{SESSION_TAG}-{uuid.uuid4().hex[:8]}"


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine, fail in CI where every broker must be present."""
    if IN_CI:
        pytest.fail(f"CI is set but: {reason}")
    pytest.skip(reason)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s`` passed; returns the last result."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval_s)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait_s: float = 10
) -> None:
    """Send ``sig`` to the process by PID, then SIGKILL if it has not exited in ``wait_s``."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=wait_s)
    except ProcessLookupError:
        pass


@contextmanager
def running(cmd: Sequence[str], **popen_kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the duration of the block; it is stopped (then killed) by PID after."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(list(cmd), **popen_kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        stop_process(proc)


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


REDIS_SERVER = "/usr/bin/redis-server"


def start_redis_server(
    directory: str, port: int, *extra: str, wait_s: float = 10
) -> subprocess.Popen[bytes]:
    """Start a private ``redis-server`` on 127.0.0.1:``port`` with its files in ``directory``
    (append-only file on, no RDB snapshots); returns once the port accepts connections.

    Never the shared server: the caller stops it with ``stop_process`` (by PID). Starting it
    again with the same ``directory`` reloads what the append-only file kept.
    """
    cmd = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes"]
    cmd += ["--dir", directory, "--save", "", *extra]
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: proc.poll() is not None or port_open("127.0.0.1", port), wait_s)
    if proc.poll() is not None or not port_open("127.0.0.1", port):
        stop_process(proc)
        raise RuntimeError(f"redis-server did not start on port {port}: {' '.join(cmd)}")
    return proc


def cleanup_queues(broker: object, queue_name: str) -> None:
    """Empty a test's queue and its dead-letter queue; delete them where the broker can (a
    shared RabbitMQ would otherwise collect one durable queue per test run). On Redis, also
    delete geboost's bookkeeping keys of both (``geboost:<queue>:...``: held lists, the
    consumers' lease ZSET), which outlive the lists they describe."""
    from geboost import GeboostError

    for name in (queue_name, queue_name + ".dlq"):
        try:
            delete = getattr(broker, "delete_queue", None)
            if delete is not None:
                delete(name)
            else:
                broker.purge(name)  # type: ignore[attr-defined]
        except GeboostError:
            pass
    new_pool = getattr(broker, "new_connection_pool", None)
    if new_pool is not None:  # the Redis broker
        _delete_redis_bookkeeping(new_pool, queue_name)


def _delete_redis_bookkeeping(new_pool: Any, queue_name: str) -> None:
    import redis

    pool = new_pool(1)
    client = redis.Redis(connection_pool=pool)
    try:
        for name in (queue_name, queue_name + ".dlq"):
            keys = list(client.scan_iter(f"geboost:{name}:*", 1000))
            if keys:
                client.delete(*keys)
    except redis.RedisError:
        pass  # a server a test stopped: nothing shared to clean
    finally:
        client.close()
        pool.disconnect()  # a pool passed in is not closed with its client


def drain(receiver: Any, want: int, timeout_s: float = 5.0) -> list[Any]:
    """Fetch from ``receiver`` until ``want`` deliveries arrived or ``timeout_s`` passed."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(receiver.fetch(want - len(got), 0.2))
    return got


def memory_booster(func: Any, **options: Any) -> Any:
    """A booster on a memory namespace and queue of its own, signals left alone."""
    from geboost import BoostOptions, BrokerConfig, new_booster

    return new_booster(
        BoostOptions(
            queue_name=unique_name("q"),
            consume_func=func,
            broker_config=BrokerConfig(broker_url=uuid.uuid4().hex),
            handle_signals=False,
            **options,
        )
    )


SHARED_REDIS_URL = "redis://127.0.0.1:6379"


def booster_options(kind: str, queue: str) -> dict[str, Any]:
    """The ``BoostOptions`` fields of a booster of broker ``kind`` on the shared servers: the
    memory broker in a namespace of its own, and RabbitMQ with its state in the shared Redis."""
    from geboost import BrokerConfig, BrokerKind

    if kind == "memory":
        return {"broker_kind": BrokerKind.MEMORY, "broker_config": BrokerConfig(broker_url=queue)}
    if kind == "redis":
        return {
            "broker_kind": BrokerKind.REDIS,
            "broker_config": BrokerConfig(broker_url=SHARED_REDIS_URL),
        }
    return {
        "broker_kind": BrokerKind.RABBITMQ,
        "broker_config": BrokerConfig(broker_url="127.0.0.1:5672"),
        "state_url": SHARED_REDIS_URL,
    }


def delete_state_keys(queue: str) -> None:
    """Delete a queue's state-store keys (``geboost:<queue>:...``: results, dedupe marks,
    schedules, registry) from the shared Redis, where RabbitMQ and memory tests keep them too."""
    import redis

    client = redis.Redis.from_url(SHARED_REDIS_URL)
    try:
        keys = list(client.scan_iter(f"geboost:{queue}:*", 1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()

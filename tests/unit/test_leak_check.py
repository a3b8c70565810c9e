"""The session-end check of tests/conftest.py: a test session that leaves keys in Redis or
queues in RabbitMQ fails, naming them, and they are removed afterwards."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests import leaks
from tests.support import port_open, python_cmd, skip_or_fail

REPO = Path(__file__).resolve().parents[2]

LEAKY_TEST = """
import pika
import redis


def test_leaves_things_behind(queue_name: str) -> None:
    redis.Redis(db=2).lpush(queue_name, b"x")
    redis.Redis().set(f"geboost:{queue_name}:consumers", b"x")
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    connection.channel().queue_declare(queue_name + ".dlq", durable=True)
    connection.close()
    print("LEFT", queue_name)
"""


@pytest.mark.redis
@pytest.mark.rabbitmq
@pytest.mark.timeout(180)
def test_a_session_that_leaves_keys_and_queues_fails_naming_them(tmp_path: Path) -> None:
    for port in (leaks.REDIS_PORT, leaks.RABBITMQ_PORT):
        if not port_open("127.0.0.1", port):
            skip_or_fail(f"no broker answers on 127.0.0.1:{port}")
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_leaky.py").write_text(textwrap.dedent(LEAKY_TEST))
    done = subprocess.run(
        python_cmd(
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_leaky.py"),
        ),
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out = done.stdout + done.stderr
    [queue] = [line.split()[-1] for line in out.splitlines() if line.startswith("LEFT ")]
    assert done.returncode == 1, out  # the test passed, the session failed
    assert "1 passed" in out, out
    assert f"redis db2: {queue}" in out, out
    assert f"redis db0: geboost:{queue}:consumers" in out, out
    assert f"rabbitmq vhost /: {queue}.dlq" in out, out
    # Reported, then removed: nothing of that session is left.
    tag = queue.split("-")[1]
    assert leaks.find(tag).found == {}

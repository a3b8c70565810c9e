# geboost patches the standard library with gevent on import; do it before anything else in
# the test process opens sockets, as the README tells users to.
# isort: off
import geboost  # noqa: F401
# isort: on

import uuid
from collections.abc import Iterator

import pytest
from loguru import logger

from geboost import Booster
from tests.support import cleanup_queues


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru record of the test, formatted, level DEBUG and up."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stop_after() -> Iterator[list[Booster[..., object]]]:
    """Boosters appended here are stopped (and their queues purged) after the test."""
    boosters: list[Booster[..., object]] = []
    yield boosters
    for b in boosters:
        b.stop(timeout_s=5)
        cleanup_queues(b.broker, b.queue_name)

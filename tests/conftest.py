# geboost patches the standard library with gevent on import; do it before anything else in
# the test process opens sockets, as the README tells users to.
# isort: off
import geboost  # noqa: F401
# isort: on

from collections.abc import Iterator

import pytest
from loguru import logger

from geboost import Booster
from tests import leaks
from tests.support import cleanup_queues, unique_name


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru record of the test, formatted, level DEBUG and up."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture
def queue_name() -> str:
    return unique_name("test")


@pytest.fixture
def stop_after() -> Iterator[list[Booster[..., object]]]:
    """Boosters appended here are stopped (and their queues purged) after the test."""
    boosters: list[Booster[..., object]] = []
    yield boosters
    for b in boosters:
        b.stop(timeout_s=5)
        cleanup_queues(b.broker, b.queue_name)


# The shared brokers must be left as the session found them (see tests/leaks.py).
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = leaks.find()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(text: str, **markup: bool) -> None:
        if reporter is not None:
            reporter.write_line(text, **markup)

    if left.problems or left.found:
        say("")
    for problem in left.problems:
        say(f"leak check incomplete: {problem}", yellow=True)
    if left.found:
        if reporter is not None:
            reporter.write_sep("=", "keys or queues left on the shared brokers", red=True)
        say(leaks.report(left), red=True, bold=True)
        leaks.remove(left)
        say("(removed them from the brokers; the session fails)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

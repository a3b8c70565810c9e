"""Refused credentials are not network failures: a push fails at once naming authentication.

Redis: a private ``redis-server --requirepass`` on a free port (the shared one has no
password), stopped by PID. The RabbitMQ cases are in tests/integration/test_rabbitmq_broker.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from geboost import (
    BoostOptions,
    BrokerAuthenticationError,
    BrokerConfig,
    BrokerKind,
    PublishError,
    new_booster,
)
from tests.support import REDIS_SERVER, free_port, skip_or_fail, start_redis_server, stop_process

pytestmark = [pytest.mark.faults]

PASSWORD = "right-password"


@pytest.fixture
def redis_port() -> Iterator[int]:
    if not os.path.exists(REDIS_SERVER):
        skip_or_fail(f"{REDIS_SERVER} is not installed")
    with tempfile.TemporaryDirectory(prefix="geboost-redis-auth-") as path:
        port = free_port()
        proc = start_redis_server(path, port, "--requirepass", PASSWORD)
        try:
            yield port
        finally:
            stop_process(proc)


def _noop(i: int) -> None:
    del i


@pytest.mark.parametrize("credentials", [":wrong-password@", "", "someone:wrong@"])
def test_redis_push_with_refused_credentials_fails_at_once(
    redis_port: int, credentials: str, log_lines: list[str]
) -> None:
    # No password at all (NOAUTH), a wrong one (WRONGPASS), an unknown user.
    b = new_booster(
        BoostOptions(
            queue_name="auth-test",
            consume_func=_noop,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=f"redis://{credentials}127.0.0.1:{redis_port}/0"),
            handle_signals=False,
            push_retries=3,
            push_retry_interval_s=5,
        )
    )
    try:
        with pytest.raises(PublishError, match="authentication") as caught:
            b.push(1)
        assert isinstance(caught.value.__cause__, BrokerAuthenticationError)
        assert caught.value.accepted == 0
        assert not [line for line in log_lines if "retrying" in line]  # no 3 x 5 s
    finally:
        b.stop(timeout_s=5)


def test_redis_push_with_the_right_password_works(redis_port: int) -> None:
    b = new_booster(
        BoostOptions(
            queue_name="auth-test",
            consume_func=_noop,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0"),
            handle_signals=False,
        )
    )
    try:
        b.push(1)
        assert b.message_count() == 1
    finally:
        b.stop(timeout_s=5)

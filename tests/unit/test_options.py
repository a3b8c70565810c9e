from __future__ import annotations

import asyncio
import functools
from typing import Any

import gevent
import pytest

from geboost import (
    BoostOptions,
    BrokerConfig,
    BrokerKind,
    ConfigurationError,
    UnknownBrokerError,
    boost,
    new_booster,
)
from tests.support import memory_booster, wait_for


def add(x: int, y: int) -> int:
    return x + y


def make(**kw: Any) -> BoostOptions[Any, Any]:
    base: dict[str, Any] = {"queue_name": "q", "consume_func": add}
    base.update(kw)
    return BoostOptions(**base)


def test_defaults_follow_the_spec() -> None:
    o = make()
    assert o.broker_kind == BrokerKind.MEMORY
    assert (o.conn_num, o.concurrent_num, o.qps_limit, o.max_retries) == (1, 50, 0, 3)
    assert (o.reconnect_interval_s, o.push_retries, o.push_retry_interval_s) == (60.0, 3, 5.0)
    assert o.broker_config == BrokerConfig()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("conn_num", 0),
        ("concurrent_num", 0),
        ("concurrent_num", 2.5),
        ("qps_limit", -1),
        ("qps_limit", float("inf")),
        ("max_retries", -1),
        ("push_retries", -1),
        ("reconnect_interval_s", -0.1),
        ("queue_name", ""),
        ("queue_name", "   "),
        ("consume_func", 42),
        ("conn_num", True),
    ],
)
def test_invalid_values_name_field_and_value(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(**{field: value})
    assert field in str(info.value)
    assert repr(value) in str(info.value)


def test_unknown_broker_kind_is_rejected_at_construction() -> None:
    with pytest.raises(UnknownBrokerError, match="kafka"):
        make(broker_kind="kafka")


def test_options_are_frozen_and_replace_revalidates() -> None:
    o = make()
    with pytest.raises(AttributeError):
        o.conn_num = 3  # type: ignore[misc]
    assert o.replace(conn_num=3).conn_num == 3
    with pytest.raises(ConfigurationError, match="conn_num"):
        o.replace(conn_num=0)


def test_fractional_qps_is_valid() -> None:
    assert make(qps_limit=0.5).qps_limit == 0.5


def test_memory_broker_rejects_unknown_transport_option_by_name() -> None:
    opts = make(broker_config=BrokerConfig(broker_transport_options={"special1": 123}))
    with pytest.raises(ConfigurationError, match="special1"):
        new_booster(opts)


def test_string_broker_kind_equals_enum() -> None:
    assert new_booster(make(broker_kind="memory")).options.broker_kind == "memory"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@localhost:6379/0",
        "amqp://guest:s3cret@host:5672/vhost",
        "rediss://u:s3cret@h",
    ],
)
def test_password_never_shows_in_reprs(url: str) -> None:
    config = BrokerConfig(broker_url=url)
    assert "s3cret" not in repr(config)
    assert "s3cret" not in repr(make(broker_config=config))
    assert "***" in repr(config)


async def async_add(x: int, y: int) -> int:
    return x + y


async def async_numbers(n: int) -> Any:
    for i in range(n):
        yield i


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x


@pytest.mark.parametrize(
    "func",
    [
        async_add,
        async_numbers,
        AsyncCallable(),
        functools.partial(async_add, 1),
        functools.partial(functools.partial(AsyncCallable()), 1),
    ],
    ids=["async-def", "async-generator", "async-__call__", "partial", "partial-of-callable"],
)
def test_async_consume_functions_are_refused_with_how_to_wrap(func: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        new_booster(make(consume_func=func))
    message = str(info.value)
    assert "gevent greenlet" in message
    assert "asyncio.run" in message
    with pytest.raises(ConfigurationError, match="gevent greenlet"):
        boost("q-async")(func)


def test_the_wrapping_the_error_suggests_runs_overlapping_coroutines() -> None:
    ran: list[int] = []

    async def record(x: int) -> None:
        await asyncio.sleep(0.05)  # calls overlap: each needs an event loop of its own
        ran.append(x)

    def task(x: int) -> None:
        return gevent.get_hub().threadpool.apply(asyncio.run, (record(x),))

    b = memory_booster(task, max_retries=0)
    b.push_many([(i,) for i in range(20)])
    b.consume()
    try:
        assert wait_for(lambda: len(ran) + b.dead_letter_count() == 20, 10)
    finally:
        b.stop(timeout_s=2)
    assert sorted(ran) == list(range(20))
    assert b.dead_letter_count() == 0

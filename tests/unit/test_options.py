from __future__ import annotations

from typing import Any

import pytest

from geboost import (
    BoostOptions,
    BrokerConfig,
    BrokerKind,
    ConfigurationError,
    UnknownBrokerError,
    new_booster,
)


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

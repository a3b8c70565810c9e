"""PushOptions: validated at construction; push_with sends the call with the caller's task id."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from geboost import BoostOptions, ConfigurationError, PushOptions
from tests.support import drain, memory_booster


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"countdown_s": -1}, "countdown_s"),
        ({"countdown_s": float("nan")}, "countdown_s"),
        ({"expire_s": -0.5}, "expire_s"),
        ({"priority": 10}, "priority"),
        ({"priority": True}, "priority"),
        ({"eta": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"eta": "2030-01-01"}, "eta"),
        ({"task_id": 5}, "task_id"),
        (
            {"eta": datetime.now(timezone.utc) + timedelta(seconds=5), "countdown_s": 5},
            "countdown_s or eta",
        ),
    ],
)
def test_bad_push_options_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        PushOptions(**changes)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"qps_scope": "fleet"}, "qps_scope"),
        ({"result_ttl_s": -1}, "result_ttl_s"),
        ({"dedupe_ttl_s": float("inf")}, "dedupe_ttl_s"),
        ({"msg_expire_s": -2}, "msg_expire_s"),
        ({"state_url": None}, "state_url"),
    ],
)
def test_bad_boost_options_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        BoostOptions(queue_name="q", consume_func=print, **changes)


def test_push_with_sends_the_callers_task_id() -> None:
    b = memory_booster(lambda x: None)
    result = b.push_with(PushOptions(task_id="order-42"), 7)
    assert result.task_id == "order-42"
    receiver = b.broker.open_receiver(b.queue_name)
    try:
        (delivery,) = drain(receiver, 1)
        assert b"order-42" in delivery.body
    finally:
        receiver.close()


def test_push_with_refuses_anything_but_push_options() -> None:
    b = memory_booster(lambda x: None)
    with pytest.raises(ConfigurationError, match="PushOptions"):
        b.push_with({"task_id": "x"}, 1)  # type: ignore[arg-type]


def test_delayed_count_counts_what_waits_for_its_delay() -> None:
    b = memory_booster(lambda x: None)
    b.push_with(PushOptions(countdown_s=60), 1)
    b.push(2)
    assert (b.delayed_count(), b.message_count()) == (1, 2)

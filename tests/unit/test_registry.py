"""The booster registry: every booster built in the process, by queue name; last one wins."""

from __future__ import annotations

import uuid

from geboost import BoostOptions, BrokerConfig, get_booster, new_booster, registered_boosters
from tests.support import unique_name


def first(x: int) -> int:
    return x


def second(x: int) -> int:
    return -x


def build(queue: str, func: object) -> object:
    return new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=func,  # type: ignore[arg-type]
            broker_config=BrokerConfig(broker_url=uuid.uuid4().hex),
            handle_signals=False,
        )
    )


def test_every_booster_is_found_by_its_queue_name() -> None:
    a, b = unique_name("r"), unique_name("r")
    ba, bb = build(a, first), build(b, second)
    assert get_booster(a) is ba and get_booster(b) is bb
    assert registered_boosters()[a] is ba
    assert get_booster(unique_name("r")) is None


def test_a_second_booster_for_a_queue_replaces_the_first_with_a_warning(
    log_lines: list[str],
) -> None:
    q = unique_name("r")
    build(q, first)
    later = build(q, second)
    assert get_booster(q) is later
    warnings = [line for line in log_lines if "a second booster was built" in line]
    assert len(warnings) == 1
    assert "test_registry.second replaces tests.unit.test_registry.first" in warnings[0]

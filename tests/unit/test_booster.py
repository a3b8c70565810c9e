"""The public API on the memory broker: push, push_many, the decorator, admin calls."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from geboost import (
    Booster,
    BrokerConfig,
    EncodeError,
    boost,
)
from geboost.message import decode_task
from tests.support import memory_booster


def add(x: int, y: int = 0) -> int:
    return x + y


def _waiting_messages(b: Booster[Any, Any]) -> list[Any]:
    r = b.broker.open_receiver(b.queue_name)
    try:
        got = list(r.fetch(1000, 0.01))
        r.requeue(got)
    finally:
        r.close()
    return [decode_task(d.body) for d in got]


def test_push_returns_task_id_and_sends_the_call() -> None:
    b = memory_booster(add)
    result = b.push(1, y=2)
    [msg] = _waiting_messages(b)
    assert msg.task_id == result.task_id and len(result.task_id) == 32
    assert (msg.args, msg.kwargs) == ([1], {"y": 2})


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ((), {}, "missing a required argument: 'x'"),
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1,), {"z": 3}, "unexpected keyword argument 'z'"),
    ],
)
def test_push_with_a_wrong_call_raises_and_sends_nothing(
    args: tuple[Any, ...], kwargs: dict[str, Any], why: str
) -> None:
    b = memory_booster(add)
    with pytest.raises(TypeError, match=why):
        b.push(*args, **kwargs)
    assert b.message_count() == 0


def test_push_of_unencodable_argument_is_a_clear_error() -> None:
    b = memory_booster(add)
    with pytest.raises(EncodeError, match="JSON"):
        b.push(object())
    assert b.message_count() == 0


def test_push_many_checks_everything_before_sending() -> None:
    b = memory_booster(add)
    with pytest.raises(TypeError):
        b.push_many([(1,), (1, 2, 3)])
    assert b.message_count() == 0
    results = b.push_many([(1,), {"x": 2, "y": 3}, [4, 5]], chunk_size=2)
    assert len({r.task_id for r in results}) == 3
    assert [(m.args, m.kwargs) for m in _waiting_messages(b)] == [
        ([1], {}),
        ([], {"x": 2, "y": 3}),
        ([4, 5], {}),
    ]
    with pytest.raises(TypeError, match="push_many items"):
        b.push_many([3])  # type: ignore[list-item]


def test_purge_and_message_count() -> None:
    b = memory_booster(add)
    b.push_many([(i,) for i in range(5)])
    assert b.message_count() == 5
    assert b.purge() == 5
    assert b.message_count() == 0


def test_decorator_keeps_the_function_callable_and_adds_push() -> None:
    namespace = uuid.uuid4().hex

    @boost(
        f"deco-{namespace}",
        broker_config=BrokerConfig(broker_url=namespace),
        handle_signals=False,
    )
    def mul(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    assert isinstance(mul, Booster)
    assert mul(3, 4) == 12
    assert mul.__doc__ == "Multiply."
    mul.push(3, 4)
    assert mul.message_count() == 1
    assert mul.options.queue_name == f"deco-{namespace}"


def test_decorator_rejects_unknown_option_by_name() -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        boost("q", no_such_option=1)(add)


def two(a: int, b: int) -> int:
    return a + b


@pytest.mark.parametrize(
    ("args", "kwargs", "ok"),
    [((1, 2), {}, True), ((1,), {"b": 2}, True), ((1,), {}, False), ((1, 2, 3), {}, False)],
)
def test_plain_signature_fast_path_still_checks_calls(
    args: tuple[Any, ...], kwargs: dict[str, Any], ok: bool
) -> None:
    b = memory_booster(two)
    if ok:
        b.push(*args, **kwargs)
        assert b.message_count() == 1
    else:
        with pytest.raises(TypeError):
            b.push(*args, **kwargs)
        assert b.message_count() == 0

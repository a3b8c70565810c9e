"""Issue 8 case 2: whatever bytes are in the queue, each message is run or dead-lettered exactly
once, with one log line naming the reason, and nothing stays in flight. On the memory broker
here; tests/integration/test_poison_redis.py runs the same scenario on Redis."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from geboost import Booster
from tests.support import memory_booster, wait_for

GOOD = 60


def _poison() -> list[bytes]:
    rng = random.Random(8)
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        b'{"task_id":"\xff\xfe","args":[1]}',  # invalid UTF-8 in a JSON string
        b'{"task_id":"p-utf8","args":["\xc3\x28"]}',
        b'{"task_id":"p-deep","args":' + deep + b"}",  # 100,000 deep
        b"[" * 100_000,
        b"\xef\xbb\xbf" + b'{"task_id":"p-bom","args":[1]}',  # BOM
        b"",
        b"not json at all",
        b'{"task_id":"p-trunc","args":[1',
        b'{"task_id":"p-nan","args":[NaN]}',
        b'{"task_id":"p-type","args":["one"]}',  # does not fit `i: int`
        b'{"task_id":"p-float","args":[1.5]}',
        b'{"task_id":"p-arity","args":[1,2,3]}',
        b'{"task_id":"p-kw","kwargs":{"j":1}}',
        b'{"task_id":"\\ud800","args":[1]}',  # an escaped lone surrogate
        b'{"args":[1]}',  # no task_id
        *(rng.randbytes(rng.randrange(1, 40)) for _ in range(5)),
    ]


def poison_scenario(booster: Booster[Any, Any], ran: list[int], log_lines: list[str]) -> None:
    """Push good tasks and poison bodies mixed, consume, and check every outcome exactly."""
    poison = _poison()
    for i, body in enumerate(poison):
        booster.push_many([(n,) for n in range(i * 3, i * 3 + 3)])
        booster.broker.publish(booster.queue_name, [body])
    pushed = len(poison) * 3
    booster.push_many([(n,) for n in range(pushed, GOOD)])
    booster.consume()
    assert wait_for(lambda: len(ran) >= GOOD and booster.dead_letter_count() >= len(poison), 30), (
        f"ran {len(ran)}/{GOOD}, dead letters {booster.dead_letter_count()}/{len(poison)}"
    )
    assert wait_for(lambda: booster.in_flight_count() == 0, 10)
    assert booster.message_count() == 0
    assert Counter(ran) == Counter(range(GOOD))  # each good task ran exactly once
    letters = booster.dead_letters(limit=100)
    assert len(letters) == len(poison)
    assert all(letter.attempts == 0 for letter in letters)
    # Each letter keeps its body (as text); the ones that are valid UTF-8 are byte-exact.
    readable = sorted(b.decode() for b in poison if _utf8(b))
    assert sorted(x.body for x in letters if _utf8(x.body.encode()) and "\ufffd" not in x.body) == [
        r for r in readable if "\ufffd" not in r
    ]
    dead_lines = [line for line in log_lines if "sent to dead-letter queue" in line]
    assert len(dead_lines) == len(poison)
    assert all("DecodeError" in line for line in dead_lines)
    booster.stop(timeout_s=5)
    assert booster.dead_letter_count() == len(poison)
    assert booster.message_count() == 0 and booster.in_flight_count() == 0
    assert len(ran) == GOOD


def recorder(ran: list[int]) -> Callable[[int], None]:
    """The consuming function: ``i: int``, so that "one" and 1.5 do not fit."""

    def consume(i: int) -> None:
        ran.append(i)

    return consume


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_poison_bodies_are_dead_lettered_once_and_good_tasks_run_once(
    log_lines: list[str],
) -> None:
    ran: list[int] = []
    booster = memory_booster(recorder(ran), max_retries=3, poll_timeout_s=0.1)
    try:
        poison_scenario(booster, ran, log_lines)
    finally:
        booster.stop(timeout_s=2)

"""Periodic tasks on the memory broker and store, driven by an injected clock through
``Scheduler.run_pending(now)``: registration checks, tick alignment, one push per tick across
schedulers, the misfire grace, cron expressions in a time zone."""

from __future__ import annotations

import math
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from geboost import (
    Booster,
    BoostOptions,
    BrokerConfig,
    BrokerKind,
    ConfigurationError,
    Cron,
    EncodeError,
    Every,
    Scheduler,
    new_booster,
)
from geboost.message import decode_task
from geboost.state.keys import schedule_last_key, schedule_tick_key
from tests.support import drain, free_port, memory_booster, unique_name

HOUR = 3600.0
T0 = 1_800_000_000.0  # a whole hour since the epoch (tick of Every(3600) and of Every(10))


def collect(x: int) -> int:
    return x


def report(region: str, limit: int = 10) -> str:
    return region


def pushed_ticks(b: Booster[Any, Any]) -> list[int]:
    """The tick (epoch ms) of every task waiting in ``b``'s queue, in queue order."""
    receiver = b.broker.open_receiver(b.queue_name)
    try:
        got = drain(receiver, b.broker.count(b.queue_name), timeout_s=2)
        receiver.ack(got)
    finally:
        receiver.close()
    return [int(decode_task(d.body).task_id.rsplit("-", 1)[1]) for d in got]


def test_every_is_checked_at_registration() -> None:
    b = memory_booster(collect)
    for bad in (0, -1, math.nan, math.inf, "1", True):
        with pytest.raises(ConfigurationError, match="interval_s"):
            b.every(bad, 1)
    with pytest.raises(EncodeError):
        b.every(1, "not an int", 2)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="misfire_grace_s"):
        b.every(Every(1, misfire_grace_s=-1), 1)
    assert b.schedules == []


def test_cron_is_checked_at_registration() -> None:
    b = memory_booster(report)
    for bad in ("", "* * *", "61 * * * *", "*/5 * * * * * * *", "every minute"):
        with pytest.raises(ConfigurationError, match="expression"):
            b.cron(bad, "eu")
    with pytest.raises(ConfigurationError, match="never fires"):
        b.cron("0 0 31 2 *", "eu")
    for zone in ("Mars/Olympus", "", "../etc"):
        with pytest.raises(ConfigurationError, match="tz"):
            b.cron(Cron("*/5 * * * *", tz=zone), "eu")
    with pytest.raises(ConfigurationError, match=r"Cron\(expression, tz=\.\.\.\)"):
        b.cron("*/5 * * * *", "eu", tz="Europe/Paris")  # type: ignore[call-arg]
    with pytest.raises(EncodeError):
        b.cron("*/5 * * * *", "eu", colour="red")  # type: ignore[call-arg]
    assert b.schedules == []


def test_a_store_is_needed() -> None:
    b = new_booster(
        BoostOptions(
            queue_name=unique_name("q"),
            consume_func=collect,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(broker_url="127.0.0.1:5672"),
            handle_signals=False,
        )
    )
    with pytest.raises(ConfigurationError, match="state_url"):
        b.every(1, 1)
    with pytest.raises(ConfigurationError, match="state_url"):
        b.cron("* * * * *", 1)
    Scheduler([b])  # no schedules: nothing needs a store


def test_identity_is_stable_and_registration_idempotent() -> None:
    b = memory_booster(report)
    one = b.cron("*/5 * * * *", "eu", limit=3)
    assert b.cron(Cron("*/5  *  * * *"), region="eu", limit=3).identity != one.identity  # kwargs
    assert b.cron("*/5 * * * *", "eu", limit=3) is one
    assert b.cron(Cron("*/5 * * * *", tz="Asia/Tokyo"), "eu", limit=3).identity != one.identity
    assert b.every(300, "eu", limit=3).identity != one.identity
    with pytest.raises(ConfigurationError, match="already registered"):
        b.cron(Cron("*/5 * * * *", misfire_grace_s=5), "eu", limit=3)
    other = memory_booster(report)  # another process registering the same call
    assert other.cron("*/5 * * * *", "eu", limit=3).identity == one.identity
    assert len(b.schedules) == 4


def test_every_ticks_are_aligned_to_the_epoch_and_pushed_once() -> None:
    b = memory_booster(collect)
    s = b.every(10, 7)
    scheduler = Scheduler([b])
    assert scheduler.run_pending(T0 + 3.2) == 1  # T0 is a tick, 3.2 s late: within the grace
    assert scheduler.run_pending(T0 + 9.99) == 0
    assert scheduler.run_pending(T0 + 10) == 1
    assert scheduler.run_pending(T0 + 10.5) == 0
    assert pushed_ticks(b) == [round(T0 * 1000), round((T0 + 10) * 1000)]
    last = s.store.get(schedule_last_key(b.queue_name, s.identity))
    assert last == str(round((T0 + 10) * 1000)).encode()


def test_several_schedulers_push_each_tick_once() -> None:
    b = memory_booster(collect)
    b.every(1, 1)
    schedulers = [Scheduler([b]) for _ in range(3)]
    for second in range(20):
        pushes = [s.run_pending(T0 + second + 0.01 * i) for i, s in enumerate(schedulers)]
        assert sum(pushes) == 1, second
    assert pushed_ticks(b) == [round((T0 + i) * 1000) for i in range(20)]


def test_only_the_latest_missed_tick_fires() -> None:
    b = memory_booster(collect)
    b.every(10, 1)
    scheduler = Scheduler([b])
    assert scheduler.run_pending(T0) == 1
    assert scheduler.run_pending(T0 + 45) == 1  # T0+10 .. T0+40 missed: only T0+40 fires
    assert pushed_ticks(b) == [round(T0 * 1000), round((T0 + 40) * 1000)]


def test_a_missed_tick_within_grace_fires_once(log_lines: list[str]) -> None:
    b = memory_booster(collect)
    b.every(HOUR, 1)
    # No scheduler ran at T0; two come back 30 s and 40 s later: one push.
    assert Scheduler([b]).run_pending(T0 + 30) == 1
    assert Scheduler([b]).run_pending(T0 + 40) == 0
    assert pushed_ticks(b) == [round(T0 * 1000)]
    assert not [line for line in log_lines if "skipped" in line]
    assert len([line for line in log_lines if "30.0 s late" in line]) == 1


def test_a_missed_tick_beyond_grace_is_skipped_with_a_log_line(log_lines: list[str]) -> None:
    b = memory_booster(collect)
    b.every(HOUR, 1)
    assert Scheduler([b], misfire_grace_s=60).run_pending(T0 + 61) == 0
    assert Scheduler([b], misfire_grace_s=60).run_pending(T0 + 70) == 0
    assert pushed_ticks(b) == []
    skipped = [line for line in log_lines if "skipped" in line]
    assert len(skipped) == 1  # the second scheduler saw the tick claimed as skipped
    assert b.queue_name in skipped[0] and "misfire_grace_s=60" in skipped[0]
    assert "WARNING" in skipped[0]
    # The next tick fires as usual.
    assert Scheduler([b]).run_pending(T0 + HOUR) == 1


def test_the_grace_of_a_schedule_beats_the_schedulers() -> None:
    b = memory_booster(collect)
    b.every(Every(HOUR, misfire_grace_s=300), 1)
    b.every(HOUR, 2)
    assert Scheduler([b], misfire_grace_s=60).run_pending(T0 + 200) == 1
    receiver = b.broker.open_receiver(b.queue_name)
    try:
        [delivery] = drain(receiver, 1, timeout_s=2)
        receiver.ack([delivery])
    finally:
        receiver.close()
    assert decode_task(delivery.body).args == [1]


def test_the_last_fired_tick_survives_its_claim(log_lines: list[str]) -> None:
    """A scheduler starting after the claim expired does not report a fired tick as skipped."""
    b = memory_booster(collect)
    s = b.every(HOUR, 1)
    assert Scheduler([b]).run_pending(T0 + 1) == 1
    s.store.delete(schedule_tick_key(b.queue_name, s.identity, round(T0 * 1000)))  # expired
    assert Scheduler([b]).run_pending(T0 + 600) == 0
    assert not [line for line in log_lines if "skipped" in line]
    assert pushed_ticks(b) == [round(T0 * 1000)]


def test_cron_ticks_in_a_time_zone() -> None:
    paris = Cron("0 9 * * 1-5", tz="Europe/Paris")
    winter = datetime(2026, 1, 14, 12, 0, tzinfo=timezone.utc).timestamp()  # a Wednesday
    assert datetime.fromtimestamp(paris.latest(winter), timezone.utc).hour == 8  # UTC+1
    summer = datetime(2026, 7, 15, 12, 0, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(paris.latest(summer), timezone.utc).hour == 7  # UTC+2
    friday = datetime(2026, 1, 16, 9, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert paris.latest(friday) == friday  # a tick is its own latest
    monday = datetime(2026, 1, 19, 9, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert paris.following(friday) == monday
    five = Cron("*/5 * * * *")
    assert five.latest(T0 + 299) == T0 and five.following(T0) == T0 + 300


def test_cron_schedule_pushes_at_its_ticks() -> None:
    b = memory_booster(report)
    b.cron("*/5 * * * *", "eu")
    scheduler = Scheduler([b])
    assert [scheduler.run_pending(T0 + dt) for dt in (0.5, 100, 299, 300.2, 599, 601)] == [
        1,
        0,
        0,
        1,
        0,
        1,
    ]
    assert pushed_ticks(b) == [round((T0 + dt) * 1000) for dt in (0, 300, 600)]


def test_schedules_registered_later_are_picked_up() -> None:
    b = memory_booster(collect)
    scheduler = Scheduler([b])
    assert scheduler.run_pending(T0) == 0
    b.every(10, 1)
    assert scheduler.run_pending(T0 + 1) == 1
    assert len(scheduler.schedules) == 1


def test_a_failed_push_releases_its_claim_and_is_tried_again(log_lines: list[str]) -> None:
    """The broker refuses (nothing listens on its port): the tick's claim is released so that
    this or another scheduler tries again while the tick is within the grace."""
    b = new_booster(
        BoostOptions(
            queue_name=unique_name("q"),
            consume_func=collect,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=f"redis://127.0.0.1:{free_port()}"),
            state_url=f"memory://{unique_name('state')}",
            push_retries=0,
            handle_signals=False,
        )
    )
    s = b.every(HOUR, 1)
    scheduler = Scheduler([b])
    assert scheduler.run_pending(T0 + 1) == 0
    claim = schedule_tick_key(b.queue_name, s.identity, round(T0 * 1000))
    assert s.store.get(claim) is None
    assert s.store.get(schedule_last_key(b.queue_name, s.identity)) is None
    assert scheduler.run_pending(T0 + 2.5) == 0  # tried again
    not_pushed = [line for line in log_lines if "not pushed" in line and "retrying in 1 s" in line]
    assert len(not_pushed) == 2
    b.broker.close()


TYPED_SNIPPET = """
from geboost import BoostOptions, Cron, Every, new_booster

def report(region: str, limit: int = 10) -> str:
    return region

b = new_booster(BoostOptions(queue_name="q", consume_func=report))
b.every(60, "eu")
b.every(Every(60, misfire_grace_s=300), "eu", limit=3)
b.cron("*/5 * * * *", region="eu")
b.cron(Cron("0 9 * * 1-5", tz="Europe/Paris"), "eu", 5)
b.every(60, 3)  # line 11: wrong type
b.cron("*/5 * * * *")  # line 12: missing argument
b.cron("*/5 * * * *", "eu", tz="Europe/Paris")  # line 13: tz is not report's
"""


def test_every_and_cron_are_type_checked_against_the_function(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(TYPED_SNIPPET).lstrip("\n"))
    out, _err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"), str(source)]
    )
    errors = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert status == 1, out
    assert errors == {11, 12, 13}, out

"""The crew of greenlets that runs calls: reuse, retirement, join, kill, close."""

from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event

from geboost.crew import Crew
from tests.support import memory_booster, wait_for


def test_members_are_reused_and_never_exceed_what_ran_at_once() -> None:
    ran: list[int] = []
    greenlets: set[int] = set()

    def run(i: int) -> None:
        greenlets.add(id(gevent.getcurrent()))
        gevent.sleep(0)
        ran.append(i)

    crew: Crew[int] = Crew(run)
    for wave in range(20):
        for i in range(10):
            crew.start(wave * 10 + i)
        assert crew.join(5)
    assert sorted(ran) == list(range(200))
    assert len(greenlets) == 10  # 200 calls, never more than 10 at once: 10 greenlets
    assert crew.members == 10
    crew.close()
    assert wait_for(lambda: crew.members == 0, 5, 0.01)


def test_len_counts_running_calls_and_join_waits_for_them() -> None:
    release = Event()
    crew: Crew[int] = Crew(lambda i: release.wait())
    for i in range(3):
        crew.start(i)
    assert len(crew) == 3
    assert not crew.join(0.05)  # still running
    release.set()
    assert crew.join(5)
    assert len(crew) == 0
    crew.close()


def test_idle_members_retire_after_idle_s_and_the_next_call_still_runs() -> None:
    ran: list[int] = []
    crew: Crew[int] = Crew(ran.append, idle_s=0.2)
    for i in range(5):
        crew.start(i)
    assert crew.join(5)
    assert crew.members == 5
    assert wait_for(lambda: crew.members == 0, 5, 0.01)
    crew.start(99)  # a new member: nothing waits on a retired one
    assert crew.join(5)
    assert sorted(ran) == [0, 1, 2, 3, 4, 99]
    crew.close()


def test_the_most_recently_idle_member_is_reused_first() -> None:
    # A steady trickle keeps reusing the same member: the others stay idle and expire.
    used: list[int] = []
    release = Event()

    def run(i: int) -> None:
        if i < 4:
            release.wait()
        used.append(id(gevent.getcurrent()))

    crew: Crew[int] = Crew(run, idle_s=60)
    for i in range(4):
        crew.start(i)
    release.set()
    assert crew.join(5)
    first_used = used[:]
    for i in range(4, 10):
        crew.start(i)
        assert crew.join(5)
    assert set(used[4:]) == {first_used[-1]}  # the last to finish, every time
    crew.close()


def test_kill_interrupts_running_calls_and_dismisses_every_member() -> None:
    interrupted: list[int] = []

    def run(i: int) -> None:
        try:
            gevent.sleep(30)
        except gevent.GreenletExit:
            interrupted.append(i)
            raise

    crew: Crew[int] = Crew(run)
    crew.start(1)
    crew.start(2)
    gevent.sleep(0.01)
    crew.kill(5)
    assert sorted(interrupted) == [1, 2]
    assert len(crew) == 0 and crew.members == 0
    assert crew.join(0)


def test_a_member_killed_while_idle_is_not_handed_calls() -> None:
    ran: list[int] = []
    crew: Crew[int] = Crew(ran.append)
    crew.start(1)
    assert crew.join(5)
    crew.kill(5)  # the idle member goes
    assert crew.members == 0
    crew.start(2)
    assert crew.join(5)
    assert ran == [1, 2]
    crew.close()


def test_close_dismisses_idle_members_at_once() -> None:
    crew: Crew[int] = Crew(lambda i: None, idle_s=60)
    for i in range(5):
        crew.start(i)
    assert crew.join(5)
    assert crew.members == 5
    crew.close()
    assert wait_for(lambda: crew.members == 0, 1, 0.01)


def test_a_stopped_booster_leaves_no_member_behind() -> None:
    seen: set[int] = set()

    def task(i: int) -> None:
        seen.add(id(gevent.getcurrent()))

    b = memory_booster(task, concurrent_num=8)
    b.push_many([(i,) for i in range(200)])
    b.consume()
    try:
        assert b.wait_until_idle(timeout_s=20)
        engine: Any = b._engine
        crew = engine.calls
        assert 1 <= len(seen) <= 8  # 200 calls in at most 8 greenlets
    finally:
        b.stop(timeout_s=2)
    assert wait_for(lambda: crew.members == 0, 2, 0.01)


def test_a_call_that_raises_does_not_strand_the_crew() -> None:
    # The engine's run never raises; should one do anyway, its member leaves, the count stays
    # right and the next call runs in a new member.
    ran: list[int] = []

    def run(i: int) -> None:
        ran.append(i)
        if i == 1:
            raise ValueError("boom")

    crew: Crew[int] = Crew(run)
    hub: Any = gevent.get_hub()
    saved = hub.NOT_ERROR
    hub.NOT_ERROR = (*saved, ValueError)  # the hub would print its traceback
    try:
        crew.start(1)
        assert crew.join(5)
        assert crew.members == 0
        crew.start(2)
        assert crew.join(5)
    finally:
        hub.NOT_ERROR = saved
    assert ran == [1, 2]
    crew.close()

"""The greenlets that run calls: kept between calls, like a thread pool's threads.

A new greenlet per call costs more than a no-op call itself. On CPython 3.11+ every greenlet
gets its own frame stack, whose first chunk is mapped fresh from the kernel and unmapped when
the greenlet ends: one ``mmap`` and one ``munmap`` (and the page faults of touching it) per
call. Measured on a 2-core VM, a bare ``gevent.pool.Pool`` spawning no-op calls spent more
than half its time in the kernel (82k calls/s); greenlets that stay and take the next call do
not pay it.

A ``Crew`` runs each ``start(job)`` in an idle member, or in a new one when none is idle;
the caller bounds how many run at once (the engine's slot semaphore), so the crew never
holds more members than that bound. A member idle for ``idle_s`` leaves, so that a burst
on a big pool does not keep thousands of parked greenlets for good; the most recently idle
member is reused first, which leaves the long-idle ones at the bottom of the stack to expire.

Because members are reused, whatever a call leaves on its greenlet outlives it: a
``gevent.local`` value, or a ``gevent.Timeout`` it started and never cancelled (which would
fire in a later call on the same member). Thread pools behave the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
from gevent import Greenlet
from gevent.event import Event
from gevent.hub import Waiter, get_hub

__all__ = ["Crew"]

T = TypeVar("T")

_RETIRE = object()  # handed to an idle member instead of a job: leave


class _Member:
    """One member's parking place while idle: its greenlet waits on ``waiter`` for a job."""

    __slots__ = ("since", "waiter")

    def __init__(self) -> None:
        self.waiter: Waiter[object] = Waiter()
        self.since = 0.0


class Crew(Generic[T]):
    """See the module docstring. ``run(job)`` must not raise, except ``GreenletExit`` when
    the member is killed; a member whose call raised anything leaves."""

    def __init__(self, run: Callable[[T], None], idle_s: float = 10.0) -> None:
        self._run = run
        self._idle_s = idle_s
        self._idle: list[_Member] = []  # a stack: the most recently idle on top
        self._members: set[Greenlet[..., None]] = set()
        self._busy = 0  # calls running now
        self._quiet = Event()  # set while no call runs
        self._quiet.set()
        self._reaper: Greenlet[..., None] | None = None
        self._hub = get_hub()

    def __len__(self) -> int:
        """How many calls run now."""
        return self._busy

    @property
    def members(self) -> int:
        """How many greenlets the crew holds, running or idle."""
        return len(self._members)

    def start(self, job: T) -> None:
        """Run ``run(job)`` in a member; never blocks, never switches."""
        self._busy += 1
        self._quiet.clear()
        if self._idle:
            member = self._idle.pop()
            # A Waiter is woken from the hub: its member runs at the loop's next turn, as a
            # freshly spawned greenlet would.
            self._hub.loop.run_callback(member.waiter.switch, job)
            return
        greenlet: Greenlet[..., None] = Greenlet(self._work, job)
        self._members.add(greenlet)
        greenlet.start()

    def _work(self, job: T) -> None:
        greenlet = gevent.getcurrent()
        assert isinstance(greenlet, Greenlet)
        member = _Member()
        try:
            while True:
                try:
                    self._run(job)
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._quiet.set()
                member.since = time.monotonic()
                self._idle.append(member)
                if self._reaper is None:
                    self._reaper = gevent.spawn(self._reap)
                got = member.waiter.get()
                if got is _RETIRE:
                    return
                job = got  # type: ignore[assignment]
        finally:
            self._members.discard(greenlet)
            if member in self._idle:  # killed while idle
                self._idle.remove(member)

    def _reap(self) -> None:
        """Retire the members idle for ``idle_s`` (the bottom of the stack), while any is."""
        try:
            while self._idle:
                gevent.sleep(self._idle_s / 2)
                cutoff = time.monotonic() - self._idle_s
                while self._idle and self._idle[0].since < cutoff:
                    member = self._idle.pop(0)
                    self._hub.loop.run_callback(member.waiter.switch, _RETIRE)
        finally:
            self._reaper = None

    def close(self) -> None:
        """Dismiss the idle members now (the engine stopped: no call comes any more)."""
        idle, self._idle = self._idle, []
        for member in idle:
            self._hub.loop.run_callback(member.waiter.switch, _RETIRE)
        if self._reaper is not None:
            self._reaper.kill(block=False)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until no call runs; False if some still run after ``timeout_s``."""
        return bool(self._quiet.wait(timeout_s))

    def kill(self, timeout_s: float) -> None:
        """Interrupt every running call (``GreenletExit``) and dismiss every member; waits up
        to ``timeout_s`` for them to end."""
        members = list(self._members)
        gevent.killall(members, block=True, timeout=timeout_s)

"""Periodic tasks: ``Booster.every`` and ``Booster.cron`` register a ``Schedule``; a
``Scheduler`` pushes each of its ticks exactly once, however many schedulers run.

Tick times come from the schedule alone, so every scheduler agrees on them: ``Every`` ticks are
aligned to the epoch (``floor(now / interval_s) * interval_s``), ``Cron`` ticks are croniter's
in the schedule's time zone. A scheduler that reaches a tick claims it in the state store
(``set_if_absent`` on a key naming the queue, the schedule and the tick, with a TTL longer than
the misfire grace); only the claimer pushes, with a task id derived from the claim, so the
schedulers of several processes or machines never double a tick. A scheduler considers only
the most recent tick: a tick missed while no scheduler ran fires once when one returns if it is
at most ``misfire_grace_s`` late, else it is skipped with a log line (never a burst of
catch-up pushes). The last fired tick of each schedule is kept in the store, so a scheduler
that starts knows whether the most recent tick was fired before it.

Limits: a scheduler killed between its claim and its push loses that tick (at most once in that
window); a push that fails after its retries releases the claim, and the tick is tried again
every second while it is within the grace (a push the broker took although it reported a failure
may then arrive twice, with the same task id).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import gevent
import msgspec
from croniter import croniter
from gevent.event import Event

from geboost.errors import ConfigurationError, GeboostError, StateStoreError
from geboost.log import QueueLogger, queue_logger
from geboost.message import fingerprint
from geboost.options import PushOptions
from geboost.state.base import StateStore
from geboost.state.keys import schedule_last_key, schedule_tick_key

if TYPE_CHECKING:
    from geboost.booster import Booster

__all__ = ["Cron", "Every", "Schedule", "Scheduler"]

DEFAULT_MISFIRE_GRACE_S = 60.0
_CLAIM_MARGIN_S = 60.0  # claims outlive the grace by this much: covers clock skew between hosts
_LAST_MIN_TTL_S = 86400.0  # the last fired tick is remembered at least a day
_RETRY_S = 1.0  # a failed claim or push is tried again this soon (while within the grace)
_MAX_WAIT_S = 1.0  # a runner looks at the clock at least this often (wall clock changes)
_canonical = msgspec.json.Encoder(order="sorted")


def _check_grace(value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(f"misfire_grace_s must be a finite number >= 0, got {value!r}")


class Every(msgspec.Struct, frozen=True):
    """Every ``interval_s`` seconds, at multiples of it since the epoch (``Every(60)`` ticks at
    each minute's start on every machine). ``misfire_grace_s`` overrides the scheduler's."""

    interval_s: float
    misfire_grace_s: float | None = None

    def __post_init__(self) -> None:
        value = self.interval_s
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigurationError(f"interval_s must be a finite number > 0, got {value!r}")
        _check_grace(self.misfire_grace_s)

    def spec(self) -> str:
        return f"every {float(self.interval_s)!r}"

    def latest(self, now: float) -> float:
        """The most recent tick at or before ``now``."""
        # The epsilon keeps a wake-up at k * interval from computing k - 1 (float division).
        return math.floor(now / self.interval_s + 1e-9) * self.interval_s

    def following(self, tick: float) -> float:
        """The first tick after ``tick``."""
        return (math.floor(tick / self.interval_s + 1e-9) + 1) * self.interval_s


class Cron(msgspec.Struct, frozen=True):
    """A cron expression (croniter's syntax: 5 fields, an optional 6th for seconds,
    ``@daily``...) read in time zone ``tz`` (an IANA name, e.g. ``"Europe/Paris"``).
    ``misfire_grace_s`` overrides the scheduler's."""

    expression: str
    tz: str = "UTC"
    misfire_grace_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str) or not croniter.is_valid(self.expression):
            raise ConfigurationError(
                f"expression {self.expression!r} is not a valid cron expression "
                "(e.g. '*/5 * * * *': minute hour day-of-month month day-of-week)"
            )
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(
                f"tz {self.tz!r} is not a known time zone (an IANA name such as 'UTC' or "
                "'Europe/Paris')"
            ) from None
        try:
            croniter(self.expression, datetime.now(zone)).get_next(float)
        except (ValueError, KeyError) as exc:  # croniter's errors are ValueErrors
            raise ConfigurationError(f"expression {self.expression!r} never fires: {exc}") from None
        _check_grace(self.misfire_grace_s)

    def spec(self) -> str:
        return f"cron {' '.join(self.expression.split())!r} tz {self.tz}"

    def latest(self, now: float) -> float:
        zone = ZoneInfo(self.tz)
        before = float(croniter(self.expression, datetime.fromtimestamp(now, zone)).get_prev(float))
        at = self.following(before)  # get_prev is strictly before: ``now`` may be a tick
        return at if at <= now else before

    def following(self, tick: float) -> float:
        zone = ZoneInfo(self.tz)
        return float(croniter(self.expression, datetime.fromtimestamp(tick, zone)).get_next(float))


class Schedule:
    """One registered schedule: a booster, an ``Every`` or ``Cron`` and the call's arguments
    (checked and encoded at registration). ``identity`` is a stable hash of the kind, the spec
    and the arguments: the same schedule registered in several processes has the same
    identity, hence the same claims."""

    def __init__(
        self,
        booster: Booster[Any, Any],
        when: Every | Cron,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: StateStore,
    ) -> None:
        self.booster = booster
        self.when = when
        self.args = args
        self.kwargs = kwargs
        self.store = store
        call = fingerprint(args, kwargs)
        digest = hashlib.blake2b(_canonical.encode([when.spec(), call]), digest_size=8)
        self.identity = digest.hexdigest()

    def __repr__(self) -> str:
        return f"Schedule({self.booster.queue_name!r}, {self.when.spec()}, id={self.identity})"

    @property
    def queue_name(self) -> str:
        return self.booster.queue_name

    def task_id(self, tick: float) -> str:
        """The id of the task pushed for ``tick`` (epoch seconds)."""
        return f"sched-{self.identity}-{_ms(tick)}"


def _ms(tick: float) -> int:
    return round(tick * 1000)


def _iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, timezone.utc).isoformat(timespec="milliseconds")


class _Runner:
    """The state of one schedule in one scheduler: the last tick it dealt with."""

    def __init__(self, schedule: Schedule, grace_s: float) -> None:
        self.schedule = schedule
        self.grace_s = grace_s
        self.handled: float | None = None  # the last tick fired, skipped or seen claimed
        self.next_tick: float | None = None  # the first tick after ``handled``
        self.log: QueueLogger = queue_logger(schedule.queue_name)

    def _ttls(self, tick: float) -> tuple[float, float]:
        period_s = max(self.schedule.when.following(tick) - tick, 0.001)
        claim_ttl_s = self.grace_s + period_s + _CLAIM_MARGIN_S
        return claim_ttl_s, max(2 * period_s + self.grace_s, _LAST_MIN_TTL_S)

    def step(self, now: float) -> tuple[float, bool]:
        """Deal with the most recent tick at or before ``now`` if not yet dealt with. Returns
        when to look again (epoch seconds) and whether this call pushed."""
        if self.next_tick is not None and now < self.next_tick:
            return self.next_tick, False
        tick = self.schedule.when.latest(now)
        if self.handled is not None and tick <= self.handled:
            return self._done(self.handled), False
        try:
            pushed = self._fire(tick, now)
        except GeboostError as exc:  # the store or the broker: try again soon
            self.log.error(
                "schedule {}: tick {} not pushed: {}; retrying in {:g} s while within "
                "misfire_grace_s",
                self.schedule.identity,
                _iso(tick),
                exc,
                _RETRY_S,
            )
            return now + _RETRY_S, False
        return self._done(tick), pushed

    def _done(self, tick: float) -> float:
        self.handled = tick
        self.next_tick = self.schedule.when.following(tick)
        return self.next_tick

    def _fire(self, tick: float, now: float) -> bool:
        s = self.schedule
        claim_key = schedule_tick_key(s.queue_name, s.identity, _ms(tick))
        last_key = schedule_last_key(s.queue_name, s.identity)
        claim_ttl_s, last_ttl_s = self._ttls(tick)
        if self.handled is None:  # first look: was it fired before this scheduler started?
            last = s.store.get(last_key)
            if last is not None and int(last) >= _ms(tick):
                return False
        late_s = now - tick
        if late_s > self.grace_s:
            if s.store.set_if_absent(claim_key, b"skipped", ttl_s=claim_ttl_s):
                self.log.warning(
                    "schedule {} ({}): tick {} missed by {:.1f} s, more than misfire_grace_s="
                    "{:g}: skipped; next tick {}",
                    s.identity,
                    s.when.spec(),
                    _iso(tick),
                    late_s,
                    self.grace_s,
                    _iso(s.when.following(tick)),
                )
            return False
        if not s.store.set_if_absent(claim_key, b"fired", ttl_s=claim_ttl_s):
            return False  # another scheduler has it
        task_id = s.task_id(tick)
        try:
            s.booster.push_with(PushOptions(task_id=task_id), *s.args, **s.kwargs)
        except GeboostError:
            self._release(claim_key)
            raise
        s.store.set(last_key, str(_ms(tick)).encode(), ttl_s=last_ttl_s)
        self.log.info(
            "schedule {}: tick {} pushed as task {}{}",
            s.identity,
            _iso(tick),
            task_id,
            f" ({late_s:.1f} s late)" if late_s >= 1 else "",
        )
        return True

    def _release(self, claim_key: str) -> None:
        try:
            self.schedule.store.delete(claim_key)
        except StateStoreError as exc:  # the claim then expires by itself: the tick is lost
            self.log.error("could not release the claim {}: {}", claim_key, exc)


class Scheduler:
    """Runs the schedules registered (``every``, ``cron``) on the given boosters: one greenlet
    per schedule pushes each tick once across every scheduler sharing the state store (see the
    module docstring).

    ``misfire_grace_s``: how late a tick may still be pushed (a tick missed while no scheduler
    ran); ``Every``/``Cron`` may override it per schedule. ``clock`` returns epoch seconds
    (tests pass their own, and drive it with ``run_pending``).

    Raises ``ConfigurationError`` when a booster with schedules has no state store (set
    ``state_url``).
    """

    def __init__(
        self,
        boosters: Iterable[Booster[Any, Any]],
        *,
        misfire_grace_s: float = DEFAULT_MISFIRE_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_grace(misfire_grace_s)
        self.boosters = list(boosters)
        self.misfire_grace_s = float(misfire_grace_s)
        self._clock = clock
        self._stopping = Event()
        self._greenlets: list[gevent.Greenlet[Any, None]] = []
        for b in self.boosters:
            if b.schedules and b.state_store is None:
                raise ConfigurationError(
                    f"queue {b.queue_name!r} has schedules but no state store: set state_url "
                    f"(a Redis URL) for broker_kind {str(b.options.broker_kind)!r}"
                )
        self._runners: dict[str, _Runner] = {}
        self._refresh()

    def _refresh(self) -> None:
        """Pick up schedules registered since (each one runner, kept by its key)."""
        for b in self.boosters:
            for s in b.schedules:
                key = f"{s.queue_name}\0{s.identity}"
                if key not in self._runners:
                    grace = s.when.misfire_grace_s
                    self._runners[key] = _Runner(
                        s, self.misfire_grace_s if grace is None else float(grace)
                    )

    @property
    def schedules(self) -> list[Schedule]:
        return [r.schedule for r in self._runners.values()]

    def run_pending(self, now: float | None = None) -> int:
        """One look at every schedule at ``now`` (default: the clock), in the caller; returns
        how many ticks this call pushed. For tests and manual driving: do not mix with
        ``start``."""
        self._refresh()
        at = self._clock() if now is None else now
        return sum(runner.step(at)[1] for runner in self._runners.values())

    def start(self) -> Scheduler:
        """Start one greenlet per schedule registered by now and return at once
        (idempotent; a schedule registered later runs from the next ``start``)."""
        if self._greenlets:
            return self
        self._refresh()
        self._stopping.clear()
        if not self._runners:
            queue_logger("-").warning("scheduler started with no schedules")
        for runner in self._runners.values():
            self._greenlets.append(gevent.spawn(self._run, runner))
        return self

    def _run(self, runner: _Runner) -> None:
        while not self._stopping.is_set():
            try:
                wake_at, _ = runner.step(self._clock())
            except Exception:  # a bug must not end the schedule silently: log, go on
                runner.log.exception("schedule {} failed; retrying", runner.schedule.identity)
                wake_at = self._clock() + _RETRY_S
            wait_s = min(max(wake_at - self._clock(), 0.0), _MAX_WAIT_S)
            self._stopping.wait(wait_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every schedule's greenlet; one in the middle of a push gets ``timeout_s`` to
        finish it, then is killed."""
        self._stopping.set()
        greenlets, self._greenlets = self._greenlets, []
        gevent.joinall(greenlets, timeout=timeout_s)
        gevent.killall([g for g in greenlets if not g.dead], block=True, timeout=1)

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

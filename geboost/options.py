"""``BoostOptions`` and ``BrokerKind``: every knob of a booster, validated at construction."""

from __future__ import annotations

import enum
import functools
import inspect
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, ParamSpec, TypeVar

import msgspec

from geboost.brokers.base import BrokerConfig, is_registered
from geboost.errors import ConfigurationError, UnknownBrokerError

__all__ = ["BoostOptions", "BrokerConfig", "BrokerKind", "PushOptions"]

P = ParamSpec("P")
R = TypeVar("R")


class BrokerKind(str, enum.Enum):
    """The built-in brokers. Any other registered kind is given as a plain string."""

    MEMORY = "memory"
    REDIS = "redis"
    RABBITMQ = "rabbitmq"

    def __str__(self) -> str:
        return self.value


class BoostOptions(msgspec.Struct, Generic[P, R], frozen=True, kw_only=True):
    """Everything a booster needs. Invalid values raise ``ConfigurationError`` naming the field.

    Units are in the names: ``*_s`` are seconds, ``qps_limit`` is calls started per second.
    """

    queue_name: str
    consume_func: Callable[P, R]
    broker_kind: BrokerKind | str = BrokerKind.MEMORY
    conn_num: int = 1
    """Broker connections pulling messages, one puller greenlet each (not one per greenlet)."""
    concurrent_num: int = 50
    """Size of the gevent Pool that runs ``consume_func``."""
    qps_limit: float = 0.0
    """Calls started per second across all pullers of this booster; 0 = unlimited."""
    max_retries: int = 3
    """Retries after the first failed call; then the message is dead-lettered."""
    retry_backoff_s: float = 1.0
    """Delay before the first retry; doubles with each further retry."""
    retry_backoff_max_s: float = 60.0
    """Upper bound of the retry delay."""
    task_timeout_s: float = 0.0
    """A call running longer is interrupted and counts as failed; 0 = no limit."""
    broker_config: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    reconnect_interval_s: float = 60.0
    """After a failed pull, each puller tries a new connection this often, forever."""
    push_retries: int = 3
    """A failed push is retried this many times before ``PublishError`` is raised."""
    push_retry_interval_s: float = 5.0
    """Pause between push retries."""
    fetch_batch: int = 100
    """Most messages one puller takes per round trip (also capped by free pool slots)."""
    poll_timeout_s: float = 1.0
    """Longest a puller blocks in one fetch; bounds how long stop() and idle acks wait."""
    strict_args: bool = True
    """A push whose argument would not arrive equal (NaN, bytes, a set, a datetime ... into a
    parameter without annotation) raises ``EncodeError``; False sends the lossy JSON form and
    warns once per parameter."""
    handle_signals: bool = True
    """SIGTERM/SIGINT stop consuming boosters gracefully (main thread only)."""
    log_level: str = "INFO"
    """geboost's records about this queue below this loguru level are not emitted (no handler
    shows them: loguru's console, the application's, the log file)."""
    log_file: str = ""
    """Path of a rotating log file for geboost's records; empty = console only."""
    log_rotation: str = "100 MB"
    """When the log file rotates: a size ("100 MB") or a time ("00:00", "1 day")."""
    log_retention: str | int = "10 days"
    """How long rotated files are kept ("10 days"), or how many (an int, e.g. 5)."""
    state_url: str = ""
    """Where shared state lives (results, pause flags, dedupe, fleet rate limits, schedules):
    a Redis URL. Empty: the broker's own Redis for REDIS, in-process for MEMORY; a RABBITMQ
    booster that needs shared state must set it."""
    result_ttl_s: float = 0.0
    """How long each task's outcome is kept for ``AsyncResult.get``; 0 = results not stored."""
    dedupe_ttl_s: float = 0.0
    """A call identical to one that succeeded this recently is not sent again; 0 = off."""
    msg_expire_s: float = 0.0
    """A task pulled this long after it was published (or became due) is not run but
    dead-lettered as expired; 0 = never expires."""
    qps_scope: str = "process"
    """``"process"``: ``qps_limit`` paces this booster; ``"queue"``: the whole fleet consuming
    the queue (every process sharing the state store)."""

    def __post_init__(self) -> None:
        self._check_identity()
        self._check_numbers()
        if not isinstance(self.strict_args, bool):
            raise ConfigurationError(f"strict_args must be a bool, got {self.strict_args!r}")
        if not isinstance(self.broker_config, BrokerConfig):
            raise ConfigurationError(
                f"broker_config must be a BrokerConfig, got {self.broker_config!r}"
            )

    def _check_identity(self) -> None:
        if not isinstance(self.queue_name, str) or not self.queue_name.strip():
            raise ConfigurationError(
                f"queue_name must be a non-empty string, got {self.queue_name!r}"
            )
        if not callable(self.consume_func):
            raise ConfigurationError(f"consume_func must be callable, got {self.consume_func!r}")
        _refuse_async(self.consume_func)
        kind = self.broker_kind
        if not isinstance(kind, str) or not kind.strip():
            raise ConfigurationError(f"broker_kind must be a BrokerKind or str, got {kind!r}")
        if not is_registered(kind):
            raise UnknownBrokerError(
                f"broker_kind {kind!r} is not a registered broker "
                "(BrokerKind.MEMORY, .REDIS, .RABBITMQ or a kind added with register_broker)"
            )

    def _check_numbers(self) -> None:
        _int_at_least("conn_num", self.conn_num, 1)
        _int_at_least("concurrent_num", self.concurrent_num, 1)
        _int_at_least("max_retries", self.max_retries, 0)
        _int_at_least("push_retries", self.push_retries, 0)
        _int_at_least("fetch_batch", self.fetch_batch, 1)
        _number_at_least("qps_limit", self.qps_limit, 0.0)
        _number_at_least("retry_backoff_s", self.retry_backoff_s, 0.0)
        _number_at_least("retry_backoff_max_s", self.retry_backoff_max_s, 0.0)
        _number_at_least("task_timeout_s", self.task_timeout_s, 0.0)
        _number_at_least("reconnect_interval_s", self.reconnect_interval_s, 0.0)
        _number_at_least("push_retry_interval_s", self.push_retry_interval_s, 0.0)
        _number_at_least("poll_timeout_s", self.poll_timeout_s, 0.001)
        _number_at_least("result_ttl_s", self.result_ttl_s, 0.0)
        _number_at_least("dedupe_ttl_s", self.dedupe_ttl_s, 0.0)
        _number_at_least("msg_expire_s", self.msg_expire_s, 0.0)
        if self.qps_scope not in ("process", "queue"):
            raise ConfigurationError(
                f"qps_scope must be 'process' or 'queue', got {self.qps_scope!r}"
            )
        if not isinstance(self.state_url, str):
            raise ConfigurationError(f"state_url must be a str, got {self.state_url!r}")

    def replace(self, **changes: Any) -> BoostOptions[P, R]:
        """A copy with some fields changed (validated again)."""
        return msgspec.structs.replace(self, **changes)


class PushOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Options of one push (``Booster.push_with``). Invalid values raise ``ConfigurationError``.

    ``countdown_s`` and ``eta`` delay the task (not both); ``expire_s`` overrides the booster's
    ``msg_expire_s`` for this task; ``priority`` 0..9, higher first.
    """

    task_id: str = ""
    """The task's id (an idempotency key, say); empty = a random one."""
    countdown_s: float = 0.0
    """Run no sooner than this many seconds from now."""
    eta: datetime | None = None
    """Run no sooner than this time (a timezone-aware datetime)."""
    expire_s: float = 0.0
    """Not run if pulled this long after it was due; 0 = the booster's ``msg_expire_s``."""
    priority: int = 0
    """0..9, higher first."""

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str):
            raise ConfigurationError(f"task_id must be a str, got {self.task_id!r}")
        _number_at_least("countdown_s", self.countdown_s, 0.0)
        _number_at_least("expire_s", self.expire_s, 0.0)
        if self.eta is not None:
            if not isinstance(self.eta, datetime):
                raise ConfigurationError(f"eta must be a datetime, got {self.eta!r}")
            if self.eta.tzinfo is None or self.eta.utcoffset() is None:
                raise ConfigurationError(
                    "eta must be timezone-aware (e.g. datetime.now(timezone.utc)), "
                    f"got {self.eta!r}"
                )
            if self.countdown_s:
                raise ConfigurationError("set countdown_s or eta, not both")
        if (
            not isinstance(self.priority, int)
            or isinstance(self.priority, bool)
            or not 0 <= self.priority <= 9
        ):
            raise ConfigurationError(f"priority must be an int from 0 to 9, got {self.priority!r}")


def _refuse_async(func: Callable[..., Any]) -> None:
    """A coroutine function called from a greenlet only creates a coroutine that never runs, so
    it is refused here rather than "succeeding" silently at every call."""
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    candidates = [target]
    if not inspect.isroutine(target) and not inspect.isclass(target):
        candidates.append(type(target).__call__)  # a callable object
    for candidate in candidates:
        if inspect.iscoroutinefunction(candidate) or inspect.isasyncgenfunction(candidate):
            name = getattr(func, "__qualname__", None) or repr(func)
            raise ConfigurationError(
                f"consume_func {name} is asynchronous (async def): geboost runs each call in a "
                "gevent greenlet, not in an asyncio event loop, so it would never run. Write it "
                "as a plain def (gevent makes blocking I/O such as requests, redis-py, sockets "
                "and time.sleep cooperative), or wrap the coroutine in a plain function that "
                "runs it to completion in one of gevent's native threads (asyncio.run directly "
                "in a greenlet fails once two calls overlap): def task(x): return "
                "gevent.get_hub().threadpool.apply(asyncio.run, (coro_task(x),))"
            )


def _int_at_least(field: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(f"{field} must be an int >= {minimum}, got {value!r}")


def _number_at_least(field: str, value: object, minimum: float) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigurationError(f"{field} must be a finite number >= {minimum}, got {value!r}")

"""``Booster``: a function bound to a queue. ``new_booster`` and ``@boost`` build one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

import gevent
import msgspec

from geboost import _patch, signals
from geboost.brokers.base import Broker, Delivery, get_broker_factory
from geboost.codec import CallCodec
from geboost.consumer import Engine
from geboost.errors import BrokerError, ConfigurationError, DecodeError, EncodeError, PublishError
from geboost.log import add_file_sink, queue_logger
from geboost.message import DeadLetter, decode_dead_letter, decode_task
from geboost.options import BoostOptions

__all__ = ["Booster", "PushResult", "boost", "new_booster"]

P = ParamSpec("P")
R = TypeVar("R")


class PushResult(msgspec.Struct, frozen=True):
    """What ``push`` returns: the id the task carries on the wire and in every log line."""

    task_id: str


class Booster(Generic[P, R]):
    """A function bound to a queue: ``push`` sends calls, ``consume`` runs them.

    Building a booster never connects: connections open on the first ``push`` or ``consume``,
    so a broker that is down cannot make construction fail or hang. Calling the booster itself
    runs the function directly, in the caller.
    """

    def __init__(self, options: BoostOptions[P, R]) -> None:
        _patch.ensure_patched()
        self.options = options
        self._func = options.consume_func
        self._codec = CallCodec(
            options.consume_func, queue_name=options.queue_name, strict_args=options.strict_args
        )
        self._broker: Broker = get_broker_factory(options.broker_kind)(options.broker_config)
        self._log = queue_logger(options.queue_name)
        self._engine: Engine | None = None
        add_file_sink(
            options.log_file,
            level=options.log_level,
            rotation=options.log_rotation,
            retention=options.log_retention,
        )
        self.__wrapped__ = options.consume_func
        self.__doc__ = options.consume_func.__doc__

    def __repr__(self) -> str:
        return (
            f"Booster(queue_name={self.queue_name!r}, "
            f"broker_kind={str(self.options.broker_kind)!r}, "
            f"func={getattr(self._func, '__qualname__', self._func)!r})"
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._func(*args, **kwargs)

    @property
    def queue_name(self) -> str:
        return self.options.queue_name

    @property
    def dead_letter_queue_name(self) -> str:
        return self.options.queue_name + ".dlq"

    @property
    def broker(self) -> Broker:
        return self._broker

    # ----------------------------------------------------------------- producing
    def push(self, *args: P.args, **kwargs: P.kwargs) -> PushResult:
        """Send one call of the function to the queue.

        The arguments are checked against the function's signature first and encoded; a call
        that does not fit, an argument with no JSON form, or (``strict_args``) one that would
        not arrive equal raises ``EncodeError`` (also a ``TypeError``) and sends nothing.
        A push the broker does not accept is retried ``push_retries`` times,
        ``push_retry_interval_s`` apart; then ``PublishError`` is raised.
        """
        body, task_id = self._codec.encode_call(args, kwargs)
        self._publish([body])
        return PushResult(task_id)

    def push_many(
        self, calls: Iterable[Sequence[Any] | Mapping[str, Any]], *, chunk_size: int = 1000
    ) -> list[PushResult]:
        """Send many calls in batches of ``chunk_size`` (one broker round trip per batch).

        Each item is a tuple/list of positional arguments or a dict of keyword arguments.
        Every call is checked before anything is sent. The same retry policy as ``push``
        applies to each batch; on ``PublishError`` the earlier batches were accepted and the
        failed one and those after it were not (``PublishError.accepted`` says how many).
        """
        if chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be >= 1, got {chunk_size!r}")
        bodies: list[bytes] = []
        results: list[PushResult] = []
        for item in calls:
            if isinstance(item, Mapping):
                body, task_id = self._codec.encode_call((), dict(item))
            elif isinstance(item, (list, tuple)):
                body, task_id = self._codec.encode_call(tuple(item), {})
            else:
                raise EncodeError(
                    "push_many items must be a tuple/list of positional arguments or a dict "
                    f"of keyword arguments, got {item!r}"
                )
            bodies.append(body)
            results.append(PushResult(task_id))
        for start in range(0, len(bodies), chunk_size):
            try:
                self._publish(bodies[start : start + chunk_size])
            except PublishError as exc:
                exc.accepted = start
                raise
        return results

    def _publish(self, bodies: list[bytes]) -> None:
        """The one place where the push retry policy lives."""
        queue = self.queue_name
        attempts = self.options.push_retries + 1
        interval_s = self.options.push_retry_interval_s
        for attempt in range(1, attempts + 1):
            try:
                self._broker.publish(queue, bodies)
                return
            except BrokerError as exc:
                if attempt == attempts:
                    self._log.error(
                        "push of {} message(s) to {} failed {} time(s), giving up: {}",
                        len(bodies),
                        queue,
                        attempts,
                        exc,
                    )
                    raise PublishError(
                        f"could not push {len(bodies)} message(s) to queue {queue!r} "
                        f"after {attempts} attempt(s): {exc}"
                    ) from exc
                self._log.warning(
                    "push to {} failed (attempt {}/{}): {}; reconnecting and retrying in {} s",
                    queue,
                    attempt,
                    attempts,
                    exc,
                    interval_s,
                )
                gevent.sleep(interval_s)

    # ----------------------------------------------------------------- consuming
    def consume(self) -> None:
        """Start consuming in the background and return at once (idempotent).

        Starts ``conn_num`` puller greenlets, each with its own broker connection, feeding one
        pool of ``concurrent_num`` greenlets. Broker failures never end consumption: pullers
        reconnect every ``reconnect_interval_s``. Use ``join()`` to block, ``stop()`` to end.
        """
        if self._engine is not None and not self._engine.stopping:
            return
        self._engine = Engine(self.options, self._broker, self._codec)
        self._engine.start()
        if self.options.handle_signals:
            signals.watch(self)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop pulling, give running calls up to ``timeout_s`` to finish, settle, close.

        Messages pulled but not started, and calls interrupted at the timeout, go back to the
        broker. Safe to call more than once and from any greenlet.
        """
        engine = self._engine
        if engine is None:
            self._broker.close()
            return
        signals.unwatch(self)
        engine.stop(timeout_s)

    def join(self, timeout_s: float | None = None) -> bool:
        """Block until the booster has stopped (or ``timeout_s`` passed); True if stopped."""
        if self._engine is None:
            return True
        return self._engine.wait_stopped(timeout_s)

    def wait_until_idle(self, timeout_s: float | None = None, *, settle_s: float = 0.2) -> bool:
        """Block until nothing waits in the queue and nothing runs or awaits a retry here.

        The state must hold for ``settle_s`` in a row (a message may be between two hands).
        Returns False if ``timeout_s`` passed first. Handy for scripts that push, consume,
        and want to end once the work is done.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            engine = self._engine
            idle = (engine is None or engine.is_idle()) and self.message_count() == 0
            if not idle:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= settle_s:
                return True
            if deadline is not None and now >= deadline:
                return False
            gevent.sleep(0.05)

    # ----------------------------------------------------------------- queue admin
    def message_count(self) -> int:
        """Messages waiting in the queue (not counting those being processed)."""
        return self._broker.count(self.queue_name)

    def in_flight_count(self) -> int | None:
        """Messages taken by consumers and not yet acknowledged, if the broker can tell."""
        return self._broker.in_flight(self.queue_name)

    def purge(self) -> int:
        """Delete every waiting message; returns how many."""
        return self._broker.purge(self.queue_name)

    def dead_letter_count(self) -> int:
        return self._broker.count(self.dead_letter_queue_name)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters without removing them."""
        held: list[Delivery] = []
        receiver = self._broker.open_receiver(self.dead_letter_queue_name, window=max(limit, 1))
        try:
            # Several fetches: a broker may hand out a window at a time.
            while len(held) < limit:
                got = receiver.fetch(limit - len(held), 0.05)
                if not got:
                    break
                held.extend(got)
            receiver.requeue(held)
        finally:
            receiver.close()
        return [decode_dead_letter(d.body) for d in held]

    def requeue_dead_letters(self, limit: int | None = None) -> int:
        """Put dead letters back on the queue as they were first sent; returns how many.

        Each original is published before its dead letter is removed, so a failure in between
        can only duplicate a message, never lose one. Letters whose original cannot be decoded
        as a task stay in the dead-letter queue.
        """
        if limit is None:
            # Only what is there now: letters that fail again while we move must not loop.
            limit = self.dead_letter_count()
        receiver = self._broker.open_receiver(self.dead_letter_queue_name, window=500)
        moved = 0
        try:
            while moved < limit:
                want = min(500, limit - moved)
                held = list(receiver.fetch(want, 0.05))
                if not held:
                    break
                movable, originals, keep = _split_requeueable(held)
                if movable:
                    self._publish(originals)
                    receiver.ack(movable)
                    moved += len(movable)
                if keep:
                    receiver.requeue(keep)
                    break
        finally:
            receiver.close()
        if moved:
            self._log.info("requeued {} dead letter(s)", moved)
        return moved


def _split_requeueable(
    held: list[Delivery],
) -> tuple[list[Delivery], list[bytes], list[Delivery]]:
    """The letters whose original is a valid task, those originals, and the other letters."""
    movable: list[Delivery] = []
    originals: list[bytes] = []
    keep: list[Delivery] = []
    for delivery in held:
        try:
            original = decode_dead_letter(delivery.body).body.encode()
            decode_task(original)
        except DecodeError:
            keep.append(delivery)
        else:
            movable.append(delivery)
            originals.append(original)
    return movable, originals, keep


def new_booster(options: BoostOptions[P, R]) -> Booster[P, R]:
    """Build the booster for ``options.broker_kind``. Does not connect to the broker.

    Raises ``ConfigurationError`` (e.g. an unknown transport option) or ``UnknownBrokerError``.
    """
    return Booster(options)


def boost(queue_name: str, **options: Any) -> Callable[[Callable[P, R]], Booster[P, R]]:
    """Decorator form, funboost-style: ``@boost("q", broker_kind=BrokerKind.REDIS, ...)``.

    Accepts every ``BoostOptions`` field except ``consume_func``. The decorated function still
    works when called directly and gains ``.push``, ``.consume``, ``.stop``, ...
    """

    def decorate(func: Callable[P, R]) -> Booster[P, R]:
        return Booster(BoostOptions(queue_name=queue_name, consume_func=func, **options))

    return decorate

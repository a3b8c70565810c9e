"""``Booster``: a function bound to a queue. ``new_booster`` and ``@boost`` build one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import gevent

from geboost import _patch, registry, signals
from geboost.brokers.base import (
    Broker,
    Delivery,
    Receiver,
    dead_letter_queue,
    get_broker_factory,
)
from geboost.codec import CallCodec, Timing
from geboost.engine import Engine
from geboost.errors import (
    BrokerAuthenticationError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    MessageRefusedError,
    PublishError,
)
from geboost.log import add_file_sink, queue_logger, set_queue_level
from geboost.message import DeadLetter, decode_dead_letter, decode_task, fingerprint
from geboost.options import BoostOptions, PushOptions
from geboost.results import AsyncResult, return_decoder
from geboost.state.base import StateStore, open_state_store
from geboost.state.keys import dedupe_key, paused_key, result_key
from geboost.state.recorder import PENDING
from geboost.state.workers import WorkerInfo, list_workers

if TYPE_CHECKING:
    from geboost.schedule import Cron, Every, Schedule

__all__ = ["Booster", "PushResult", "boost", "new_booster"]

P = ParamSpec("P")
R = TypeVar("R")

PushResult = AsyncResult
"""The former name of what ``push`` returns (it kept ``.task_id``)."""


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
        set_queue_level(options.queue_name, options.log_level)
        self._log = queue_logger(options.queue_name)
        self._engine: Engine | None = None
        self._schedules: list[Schedule] = []
        # The state store (results, pause, dedupe): built here, connected on first use.
        self._state: StateStore | None = open_state_store(
            options.state_url,
            broker_kind=str(options.broker_kind),
            broker_config=options.broker_config,
        )
        _check_state_needs(options, self._state)
        self._return_decoder = return_decoder(options.consume_func)
        add_file_sink(
            options.log_file,
            level=options.log_level,
            rotation=options.log_rotation,
            retention=options.log_retention,
        )
        self.__wrapped__ = options.consume_func
        self.__doc__ = options.consume_func.__doc__
        self._log.debug(
            "booster built: {} on the {} broker, pool of {}, {} connection(s)",
            getattr(self._func, "__qualname__", self._func),
            str(options.broker_kind),
            options.concurrent_num,
            options.conn_num,
        )
        registry.register(self)

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
        return dead_letter_queue(self.options.queue_name)

    @property
    def broker(self) -> Broker:
        return self._broker

    # ----------------------------------------------------------------- producing
    def push(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send one call of the function to the queue.

        The arguments are checked against the function's signature first and encoded; a call
        that does not fit, an argument with no JSON form, or (``strict_args``) one that would
        not arrive equal raises ``EncodeError`` (also a ``TypeError``) and sends nothing.
        A push the broker does not accept is retried ``push_retries`` times,
        ``push_retry_interval_s`` apart; then ``PublishError`` is raised.

        Returns an ``AsyncResult`` (``.task_id``; ``.get()`` with ``result_ttl_s > 0``). With
        ``result_ttl_s > 0`` the task's ``pending`` status is stored first; with
        ``dedupe_ttl_s > 0`` a call that succeeded that recently is not sent (the result says
        ``deduplicated``). Those store round trips raise ``StateStoreError`` on failure.
        """
        return self._push_one(args, kwargs, "")

    def push_with(self, opts: PushOptions, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``push`` with per-task options (``PushOptions``): its task id (also the call's
        dedupe fingerprint), a delay (``countdown_s`` or ``eta``), an expiry (``expire_s``) and
        a ``priority``.

        A delayed task waits in the broker, not in a worker. A delay or a priority on a broker
        that does not implement ``publish_timed`` raises ``ConfigurationError``, sending
        nothing. Otherwise raises what ``push`` raises.
        """
        if not isinstance(opts, PushOptions):
            raise ConfigurationError(f"push_with takes a PushOptions first, got {opts!r}")
        now = time.time()
        delay_s = opts.countdown_s
        if opts.eta is not None:
            delay_s = max(0.0, opts.eta.timestamp() - now)
        due_time = now + delay_s if delay_s > 0 else 0.0
        expires_at = (due_time or now) + opts.expire_s if opts.expire_s else 0.0
        timed = delay_s > 0 or opts.priority > 0
        send: Callable[[str, Sequence[bytes]], None] | None = None
        if timed:
            publish_timed = getattr(self._broker, "publish_timed", None)
            if publish_timed is None:
                raise ConfigurationError(
                    f"broker_kind {str(self.options.broker_kind)!r} does not support delayed or "
                    "prioritised tasks (its broker has no publish_timed): push without "
                    "countdown_s, eta and priority"
                )

            def send(queue: str, bodies: Sequence[bytes]) -> None:
                # The delay is counted again at each retry, so a retried push is not late.
                left_s = max(0.0, due_time - time.time()) if due_time else 0.0
                publish_timed(queue, bodies, delay_s=left_s, priority=opts.priority)

        timing = (due_time, expires_at, opts.priority) if (timed or expires_at) else None
        return self._push_one(args, kwargs, opts.task_id, timing=timing, send=send)

    def _push_one(
        self,
        args: Any,
        kwargs: Any,
        task_id: str,
        *,
        timing: Timing | None = None,
        send: Callable[[str, Sequence[bytes]], None] | None = None,
    ) -> AsyncResult[R]:
        fp = ""
        if self.options.dedupe_ttl_s > 0:
            fp, earlier = self._dedupe(args, kwargs, task_id)
            if earlier is not None:
                return self._async(earlier, deduplicated=True)
        body, task_id = self._codec.encode_call(
            args, kwargs, task_id=task_id, fingerprint=fp, timing=timing
        )
        self._mark_pending([task_id])
        self._publish([body], send=send)
        return self._async(task_id)

    def _dedupe(self, args: Any, kwargs: Any, task_id: str) -> tuple[str, str | None]:
        """The call's fingerprint and the id of the task that succeeded with it, if any."""
        if task_id:
            fp = "id:" + task_id
        else:
            try:
                fp = fingerprint(tuple(args), dict(kwargs))
            except EncodeError:
                return "", None  # encode_call names the argument that has no JSON form
        earlier = self._need_state("dedupe").get(dedupe_key(self.queue_name, fp))
        return fp, earlier.decode() if earlier is not None else None

    def _mark_pending(self, task_ids: list[str]) -> None:
        ttl_s = self.options.result_ttl_s
        if ttl_s > 0 and task_ids:
            sets = [(result_key(self.queue_name, t), PENDING, ttl_s) for t in task_ids]
            self._need_state("results").write_batch(sets, [])

    def _async(self, task_id: str, *, deduplicated: bool = False) -> AsyncResult[R]:
        return AsyncResult(
            task_id,
            queue_name=self.queue_name,
            store=self._state if self.options.result_ttl_s > 0 else None,
            decoder=self._return_decoder,
            deduplicated=deduplicated,
        )

    def _need_state(self, feature: str) -> StateStore:
        if self._state is None:
            raise ConfigurationError(
                f"{feature} on queue {self.queue_name!r} needs a state store: set state_url "
                f"(a Redis URL) for broker_kind {str(self.options.broker_kind)!r}"
            )
        return self._state

    # ----------------------------------------------------------------- results and pause
    def result(self, task_id: str) -> AsyncResult[R]:
        """The ``AsyncResult`` of a task of this queue by its id, from any process sharing the
        state store. Raises ``ConfigurationError`` when the booster has no store."""
        return AsyncResult(
            task_id,
            queue_name=self.queue_name,
            store=self._need_state("result"),
            decoder=self._return_decoder,
        )

    def pause(self) -> None:
        """Pause the queue fleet-wide: every worker of it sharing the state store starts no new
        call within 1 s (calls in flight finish; fetched, unstarted messages go back). The flag
        is stored without expiry: it outlives worker restarts until ``resume``. Raises
        ``ConfigurationError`` without a store, ``StateStoreError``."""
        self._need_state("pause").set(paused_key(self.queue_name), b"1")
        self._log.info("queue paused")

    def resume(self) -> None:
        """Undo ``pause``: workers start calls again within 1 s."""
        self._need_state("resume").delete(paused_key(self.queue_name))
        self._log.info("queue resumed")

    def is_paused(self) -> bool:
        return self._need_state("is_paused").get(paused_key(self.queue_name)) is not None

    def workers(self) -> list[WorkerInfo]:
        """The workers consuming this queue now, in any process sharing the state store (those
        killed without stopping drop out within ``WORKER_TTL_S``). Raises
        ``ConfigurationError`` without a store, ``StateStoreError``."""
        return list_workers(self._need_state("workers"), self.queue_name)

    def push_many(
        self, calls: Iterable[Sequence[Any] | Mapping[str, Any]], *, chunk_size: int = 1000
    ) -> list[AsyncResult[R]]:
        """Send many calls in batches of ``chunk_size`` (one broker round trip per batch).

        Each item is a tuple/list of positional arguments or a dict of keyword arguments.
        Every call is checked before anything is sent. The same retry policy as ``push``
        applies to each batch (a retry sends only what the broker had not accepted yet). On
        ``PublishError``, the items before index ``PublishError.accepted`` are in the queue
        and the others are not. With dedupe on, items that are deduplicated are not sent (their
        results say so) and ``accepted`` counts the items sent.
        """
        if chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be >= 1, got {chunk_size!r}")
        bodies: list[bytes] = []
        results: list[AsyncResult[R]] = []
        for item in calls:
            if isinstance(item, Mapping):
                args, kwargs = (), dict(item)
            elif isinstance(item, (list, tuple)):
                args, kwargs = tuple(item), {}
            else:
                raise EncodeError(
                    "push_many items must be a tuple/list of positional arguments or a dict "
                    f"of keyword arguments, got {item!r}"
                )
            fp = ""
            if self.options.dedupe_ttl_s > 0:
                fp, earlier = self._dedupe(args, kwargs, "")
                if earlier is not None:
                    results.append(self._async(earlier, deduplicated=True))
                    continue
            body, task_id = self._codec.encode_call(args, kwargs, fingerprint=fp)
            bodies.append(body)
            results.append(self._async(task_id))
        self._mark_pending([r.task_id for r in results if not r.deduplicated])
        for start in range(0, len(bodies), chunk_size):
            try:
                self._publish(bodies[start : start + chunk_size], first_index=start)
            except PublishError as exc:
                exc.accepted += start
                raise
        return results

    def _publish(
        self,
        bodies: list[bytes],
        *,
        first_index: int = 0,
        send: Callable[[str, Sequence[bytes]], None] | None = None,
    ) -> None:
        """The one place where the push retry policy lives.

        A ``BrokerError`` is retried ``push_retries`` times, each retry sending only the bodies
        after the ``accepted`` leading ones (never one the broker confirmed). A refused message
        (``MessageRefusedError``) or refused credentials (``BrokerAuthenticationError``) fail at
        once: sending again cannot help. ``PublishError.accepted`` counts the leading bodies in
        the queue; ``first_index`` is the index of ``bodies[0]`` in the caller's items.
        """
        queue = self.queue_name
        attempts = self.options.push_retries + 1
        interval_s = self.options.push_retry_interval_s
        accepted = 0
        publish = send or self._broker.publish
        for attempt in range(1, attempts + 1):
            try:
                publish(queue, bodies[accepted:])
                return
            except BrokerError as exc:
                sent_from = accepted
                accepted += max(0, min(exc.accepted, len(bodies) - accepted))
                if isinstance(exc, (MessageRefusedError, BrokerAuthenticationError)):
                    error = PublishError(
                        f"could not push to queue {queue!r}, not retried: "
                        f"{_refusal(exc, first_index + sent_from)}"
                    )
                elif attempt < attempts:
                    self._log.warning(
                        "push to {} failed (attempt {}/{}): {}; reconnecting and retrying in {} s",
                        queue,
                        attempt,
                        attempts,
                        exc,
                        interval_s,
                    )
                    gevent.sleep(interval_s)
                    continue
                else:
                    error = PublishError(
                        f"could not push {len(bodies) - accepted} message(s) to queue {queue!r} "
                        f"after {attempts} attempt(s): {exc}"
                    )
                error.accepted = accepted
                self._log.error("push to {} failed, giving up: {}", queue, error)
                raise error from exc

    # ----------------------------------------------------------------- periodic tasks
    def every(self, interval_s: float | Every, *args: P.args, **kwargs: P.kwargs) -> Schedule:
        """Register a call pushed every ``interval_s`` seconds, at multiples of it since the
        epoch, by a ``Scheduler`` running this booster (``Every(interval_s,
        misfire_grace_s=...)`` sets the schedule's own grace). Returns the ``Schedule``;
        registering the same one again returns it.

        Raises ``ConfigurationError`` (``interval_s`` <= 0, no state store: set
        ``state_url``), ``EncodeError`` (arguments that do not fit, as ``push``).
        """
        from geboost.schedule import Every

        when = interval_s if isinstance(interval_s, Every) else Every(interval_s)
        return self._register(when, args, kwargs)

    def cron(self, expression: str | Cron, *args: P.args, **kwargs: P.kwargs) -> Schedule:
        """Register a call pushed at each time matching the cron ``expression`` (UTC), by a
        ``Scheduler`` running this booster. Another time zone or grace: ``Cron(expression,
        tz="Europe/Paris", misfire_grace_s=...)`` (a ``tz=`` keyword here would be an argument
        of the function: keywords after ``*args`` belong to it). Returns the ``Schedule``.

        Raises ``ConfigurationError`` (an invalid expression or time zone, no state store),
        ``EncodeError`` (arguments that do not fit, as ``push``).
        """
        from geboost.schedule import Cron

        when = expression if isinstance(expression, Cron) else Cron(expression)
        return self._register(when, args, kwargs)

    def _register(self, when: Every | Cron, args: Any, kwargs: Any) -> Schedule:
        from geboost.schedule import Every, Schedule

        store = self._need_state("a schedule")
        try:
            self._codec.encode_call(tuple(args), dict(kwargs))  # refused now, not at a tick
        except EncodeError:
            if "tz" in kwargs and not isinstance(when, Every):
                raise ConfigurationError(
                    f"{self.queue_name}: cron(..., tz=...) passes tz to the function, which "
                    "does not take it; give the time zone as Cron(expression, tz=...)"
                ) from None
            raise
        schedule = Schedule(self, when, tuple(args), dict(kwargs), store)
        for known in self._schedules:
            if known.identity == schedule.identity:
                if known.when != when:
                    raise ConfigurationError(
                        f"{self.queue_name}: {schedule!r} is already registered with "
                        f"misfire_grace_s={known.when.misfire_grace_s!r}"
                    )
                return known
        self._schedules.append(schedule)
        self._log.debug("registered {}", schedule)
        return schedule

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules registered with ``every`` and ``cron`` (a copy)."""
        return list(self._schedules)

    @property
    def state_store(self) -> StateStore | None:
        """The booster's state store, or None (RabbitMQ without ``state_url``)."""
        return self._state

    # ----------------------------------------------------------------- consuming
    def consume(self) -> None:
        """Start consuming in the background and return at once (idempotent).

        Starts ``conn_num`` puller greenlets, each with its own broker connection, feeding one
        pool of ``concurrent_num`` greenlets. Broker failures never end consumption: pullers
        reconnect every ``reconnect_interval_s``. Use ``join()`` to block, ``stop()`` to end.
        """
        if self._engine is not None and not self._engine.stopping:
            return
        self._engine = Engine(self.options, self._broker, self._codec, self._state)
        self._engine.start()
        if self.options.handle_signals:
            signals.watch(self)

    def multi_process_consume(self, processes: int) -> int:
        """Consume this queue in ``processes`` fresh worker processes under a supervisor.

        Blocks until SIGTERM/SIGINT stops the children (then returns 0). Each child is a new
        interpreter running ``geboost worker <module> --queues <queue>``: it finds this booster
        by importing the file that defines the function (for a script, the script's own path,
        imported as a module, so its ``if __name__ == "__main__":`` block does not run again).
        """
        from geboost.cli.supervisor import module_of, run_workers

        return run_workers([module_of(self._func)], processes=processes, queues=[self.queue_name])

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

    def delayed_count(self) -> int | None:
        """Messages waiting for their delay (counted in ``message_count`` too), or None if the
        broker cannot tell (RabbitMQ, a broker without delays)."""
        count = getattr(self._broker, "delayed_count", None)
        return None if count is None else count(self.queue_name)

    def in_flight_count(self) -> int | None:
        """Messages taken by consumers and not yet acknowledged, if the broker can tell."""
        return self._broker.in_flight(self.queue_name)

    def purge(self) -> int:
        """Delete every waiting message; returns how many."""
        return self._broker.purge(self.queue_name)

    def dead_letter_count(self) -> int:
        return self._broker.count(self.dead_letter_queue_name)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters without removing them.

        Reads until ``limit`` or the count of letters found at the start is reached, or the
        queue is really empty; gives up after ``_LETTERS_STALL_S`` without a letter arriving.
        """
        queue = self.dead_letter_queue_name
        held: list[Delivery] = []
        target = min(limit, self._broker.count(queue))
        receiver = self._broker.open_receiver(queue, window=max(target, 1))
        try:
            for got in _take_letters(receiver, lambda: self._broker.count(queue), target):
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
        queue = self.dead_letter_queue_name
        # Only what is there now: letters that fail again while we move must not loop.
        target = self._broker.count(queue)
        if limit is not None:
            target = min(limit, target)
        receiver = self._broker.open_receiver(queue, window=min(max(target, 1), 500))
        moved = 0
        kept: list[Delivery] = []  # held until the end, so that they are not fetched again
        try:
            for held in _take_letters(receiver, lambda: self._broker.count(queue), target):
                movable, originals, keep = _split_requeueable(list(held))
                kept.extend(keep)
                if movable:
                    try:
                        self._publish(originals)
                    except PublishError as exc:
                        # Those the queue accepted leave the dead-letter queue: no duplicate.
                        receiver.ack(movable[: exc.accepted])
                        raise
                    receiver.ack(movable)
                    moved += len(movable)
            receiver.requeue(kept)
        finally:
            receiver.close()
        if moved:
            self._log.info("requeued {} dead letter(s)", moved)
        return moved


def _refusal(exc: BrokerError, first_index: int) -> str:
    """The refusal's text, naming the refused item when the broker said which one it was."""
    if isinstance(exc, MessageRefusedError) and exc.index >= 0:
        return f"item {first_index + exc.index} refused: {exc}"
    return str(exc)  # an authentication error's text says so


_LETTERS_FETCH_S = 0.2  # one wait for letters
_LETTERS_LAST_WAIT_S = 1.0  # after the queue counts 0: a letter on its way to us is not counted
_LETTERS_STALL_S = 5.0  # no letter for this long although some are counted: give up


def _take_letters(
    receiver: Receiver, count: Callable[[], int], target: int, batch: int = 500
) -> Iterator[Sequence[Delivery]]:
    """Batches fetched from ``receiver`` until ``target`` were taken or the queue is empty.

    An empty fetch does not end it (a large letter may still be on its way, with the small ones
    behind it); the queue counting 0 and nothing arriving for ``_LETTERS_LAST_WAIT_S`` does, as
    does ``_LETTERS_STALL_S`` without any letter (another reader holds them): always bounded.
    """
    taken = 0
    last_letter_at = time.monotonic()
    while taken < target:
        want = min(batch, target - taken)
        got = receiver.fetch(want, _LETTERS_FETCH_S)
        if not got and count() == 0:
            got = receiver.fetch(want, _LETTERS_LAST_WAIT_S)
            if not got:
                return
        if got:
            taken += len(got)
            last_letter_at = time.monotonic()
            yield got
        elif time.monotonic() - last_letter_at >= _LETTERS_STALL_S:
            return


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


def _check_state_needs(options: BoostOptions[Any, Any], state: StateStore | None) -> None:
    if state is not None:
        return
    needs = [n for n in ("result_ttl_s", "dedupe_ttl_s") if getattr(options, n) > 0]
    if options.qps_scope == "queue" and options.qps_limit > 0:
        needs.append("qps_scope='queue'")
    if needs:
        raise ConfigurationError(
            f"{' and '.join(needs)} need a state store, and broker_kind "
            f"{str(options.broker_kind)!r} has none of its own: set state_url (a Redis URL)"
        )


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

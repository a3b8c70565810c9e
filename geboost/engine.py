"""The engine: ``conn_num`` pullers feeding ONE group of greenlets bounded by ``concurrent_num``.

The engine owns what the pullers share: the slot semaphore, the group of running calls, the
leaky bucket, and the jobs waiting for a later attempt (retries and dead-letter writes). Each
puller (``geboost.puller``) owns its receiver, its loop, its acks and its reconnection.

One slot primitive. ``slots`` is a ``BoundedSemaphore(concurrent_num)``: a puller acquires one
slot per message before it fetches, and the call gives it back when it ends (``finally``), so no
path can keep a slot, and ``pool.spawn`` never blocks. That is gevent's ``Pool`` taken apart: a
``Group`` of calls plus a semaphore, so that slots can be reserved before the fetch that fills
them.

Waiting jobs hold no slot and no greenlet: they sit in one heap ordered by due time. Any puller
starts the due ones at its next step, and every puller's fetch ends by the earliest due time,
so a retry starts on time even when the queue is empty.

Stopping (``stop``), in this order, so that a message is given back only if its call never
started or was interrupted, and never while its call still runs:
1. ``stopping`` is set: from now on no call starts. A fetch that returns after this gives its
   messages back unstarted; waiting jobs are given back (a pending dead-letter write is tried
   once more first).
2. Running calls get ``timeout_s`` to finish; those still running are killed, and their
   messages given back.
3. ``drained`` is set: pullers send their last acks and requeues and close their receivers.
When ``stop`` returns, no call of this engine runs any more.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Group

from geboost.brokers.base import Broker, Delivery
from geboost.codec import CallCodec
from geboost.errors import BrokerError, DecodeError
from geboost.log import queue_logger
from geboost.message import DeadLetter, TaskMessage, encode
from geboost.options import BoostOptions
from geboost.puller import Puller
from geboost.ratelimit import LeakyBucket

__all__ = ["Engine", "Job", "TaskExpired"]

_TRACEBACK_MAX_CHARS = 8000  # the tail of a long traceback is kept: it ends where it failed
_DEAD_LETTER_FIRST_RETRY_S = 1.0  # then doubling, up to reconnect_interval_s
# A message fetched before its due time waits in the engine (held, no slot) when it is due
# within this; farther, it goes back to the broker's delay (publish_timed) so that a worker
# never holds long waits (RabbitMQ's delay queues deliver in steps, see brokers/rabbitmq.py).
_HOLD_MAX_S = 1.0
_EARLY_S = 0.001  # closer than this to its due time a message just runs


class TaskExpired(Exception):
    """A task pulled after its expiry time; dead-lettered with the error ``"expired"``."""

    def __str__(self) -> str:
        return "expired"


class Job:
    """One message on its way through the engine, over one or more attempts."""

    __slots__ = ("attempt", "delivery", "error", "message", "puller", "writes_failed")

    def __init__(self, puller: Puller, delivery: Delivery) -> None:
        self.puller = puller
        self.delivery = delivery
        self.message: TaskMessage | None = None
        self.attempt = 1  # the attempt the next call makes
        self.error: BaseException | None = None  # the last attempt's failure
        self.writes_failed = 0  # dead-letter writes that failed; > 0 means "to dead-letter"

    @property
    def task_id(self) -> str:
        return self.message.task_id if self.message is not None else ""


class Engine:
    """Runs one booster's consumption; created by ``Booster.consume``."""

    def __init__(self, options: BoostOptions[Any, Any], broker: Broker, codec: CallCodec) -> None:
        self.options = options
        self.broker = broker
        self.queue_name = options.queue_name
        self.dead_letter_queue = options.queue_name + ".dlq"
        self.log = queue_logger(options.queue_name)
        self._func: Callable[..., Any] = options.consume_func
        self._codec = codec
        self.slots = BoundedSemaphore(options.concurrent_num)
        self.calls = Group()
        self.bucket = LeakyBucket(options.qps_limit)
        self._stopping = Event()
        self.drained = Event()
        self._stopped = Event()
        self.pullers: list[Puller] = []
        self._puller_greenlets: list[Greenlet[Any, None]] = []
        self._waiting: list[tuple[float, int, Job]] = []  # heap of (due, tie-breaker, job)
        self._order = itertools.count()
        self.expired_count = 0  # tasks dead-lettered as expired since this engine started
        self._expire_s = options.msg_expire_s
        if options.qps_limit > 0:
            # About one second of work at most per fetch, so a slow rate holds few messages.
            self.batch_cap = min(options.fetch_batch, max(1, math.ceil(options.qps_limit)))
        else:
            self.batch_cap = options.fetch_batch

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # What each receiver's owner can start soon: its share of the pool plus a quarter, so
        # that a broker pushing ahead (RabbitMQ) has the next messages at hand when slots free
        # (measured: io-fanout@500 on RabbitMQ 1.13 s -> 1.10 s), and no more than that.
        window = math.ceil(self.options.concurrent_num * 1.25 / self.options.conn_num)
        for index in range(self.options.conn_num):
            receiver = self.broker.open_receiver(self.queue_name, window=window)
            puller = Puller(self, index, receiver)
            self.pullers.append(puller)
            self._puller_greenlets.append(gevent.spawn(puller.run))
        self.log.info(
            "consuming with {} connection(s), pool of {}, qps_limit {}",
            self.options.conn_num,
            self.options.concurrent_num,
            self.options.qps_limit or "unlimited",
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopping(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True at once when ``stop`` begins."""
        return bool(self._stopping.wait(timeout_s))

    def is_idle(self) -> bool:
        """No call running or waiting, no message in a puller's hand, no ack unsent."""
        return not self.calls and not self._waiting and all(p.is_idle() for p in self.pullers)

    def stop(self, timeout_s: float) -> None:
        """Stop starting calls, give running ones ``timeout_s`` to finish, settle, close."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self.log.info("stopping: running calls get up to {} s to finish", timeout_s)
        self._give_back_waiting()
        if not self.calls.join(timeout=max(0.0, deadline - time.monotonic())):
            self.log.warning(
                "{} call(s) still running after {} s are interrupted; "
                "their messages go back to the queue",
                len(self.calls),
                timeout_s,
            )
            self.calls.kill(block=True, timeout=5)
            if self.calls:
                self.log.error("{} call(s) ignored the interruption and still run", len(self.calls))
        self.drained.set()
        # Pullers leave after their current fetch (at most poll_timeout_s) and close their
        # receivers themselves; bounded so that a dead broker cannot make stop() hang.
        gevent.joinall(self._puller_greenlets, timeout=self.options.poll_timeout_s + 30)
        for g in self._puller_greenlets:
            if not g.dead:
                g.kill(block=False)
        self.broker.close()
        self._stopped.set()
        self.log.info("stopped")

    def wait_stopped(self, timeout_s: float | None) -> bool:
        return bool(self._stopped.wait(timeout_s))

    # ----------------------------------------------------------------- waiting jobs
    def _wait(self, job: Job, delay_s: float) -> None:
        """Park ``job`` until ``delay_s`` from now; it holds no slot meanwhile."""
        if self.stopping:
            self._give_back_one(job)
            return
        due = time.monotonic() + delay_s
        heapq.heappush(self._waiting, (due, next(self._order), job))

    def next_due(self) -> float | None:
        """When the earliest waiting job is due (monotonic clock), or None."""
        return self._waiting[0][0] if self._waiting else None

    def pop_due(self) -> Job | None:
        """The earliest waiting job if it is due now."""
        if self._waiting and self._waiting[0][0] <= time.monotonic():
            return heapq.heappop(self._waiting)[2]
        return None

    def put_back(self, job: Job) -> None:
        """A due job a puller could not start yet (no free slot): first in line again."""
        self._wait(job, 0.0)

    def _give_back_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for _, _, job in sorted(waiting):
            if job.writes_failed and self._write_dead_letter(job):
                continue
            self._give_back_one(job)

    def _give_back_one(self, job: Job) -> None:
        if job.writes_failed:
            job.puller.log_for(job).error(
                "stopping before the dead letter could be written; the message goes back to "
                "the queue and may run again"
            )
        job.puller.give_back([job.delivery])

    # ----------------------------------------------------------------- running calls
    def start_job(self, job: Job) -> None:
        """Run ``job``'s next step in the group; the caller has acquired a slot for it."""
        job.puller.running += 1
        self.calls.spawn(self._run, job)

    def _run(self, job: Job) -> None:
        """One step of one message, in a slot. Never raises (except GreenletExit)."""
        try:
            if job.writes_failed:
                self._dead_letter(job)
            else:
                self._attempt(job)
        except GreenletExit:
            # stop() interrupted the call: the message goes back to the queue.
            job.puller.give_back([job.delivery])
            raise
        except Exception:
            # A bug of ours must not strand the message: it goes back, and the log says why.
            job.puller.log_for(job).exception("unexpected error; the message goes back")
            job.puller.give_back([job.delivery])
        finally:
            job.puller.running -= 1
            self.slots.release()

    def _attempt(self, job: Job) -> None:
        message = job.message
        if message is None:
            try:
                message = job.message = self._codec.decode(job.delivery.body)
            except DecodeError as exc:
                if exc.task_id:
                    job.message = TaskMessage(task_id=exc.task_id)
                job.error, job.attempt = exc, 0
                self._dead_letter(job)
                return
            timed = message.due_time or message.expires_at or self._expire_s
            if timed and self._not_to_run_now(job, message):
                return
        error, final = self._call(job, message)
        if error is None:
            job.puller.ack(job.delivery)
            return
        job.error = error
        if final or job.attempt > self.options.max_retries:
            self._dead_letter(job)
            return
        opts = self.options
        delay_s = min(opts.retry_backoff_max_s, opts.retry_backoff_s * 2 ** (job.attempt - 1))
        job.puller.log_for(job).warning(
            "attempt {}/{} failed: {}; retrying in {:.3g} s",
            job.attempt,
            opts.max_retries + 1,
            _describe(error),
            delay_s,
        )
        job.attempt += 1
        self._wait(job, delay_s)

    def _not_to_run_now(self, job: Job, message: TaskMessage) -> bool:
        """The scheduling hook, on a freshly pulled message with a due time or an expiry (plain
        messages skip it: no clock read): True if it was set aside (not yet due: held or sent
        back to the broker's delay) or dead-lettered as expired."""
        now = time.time()
        wait_s = message.due_time - now
        if wait_s > _EARLY_S:
            if wait_s <= _HOLD_MAX_S or not self._delay_again(job, message, wait_s):
                self._wait(job, wait_s)
            return True
        expires_at = message.expires_at
        if not expires_at and self._expire_s:
            start = max(message.publish_time, message.due_time)
            expires_at = start + self._expire_s if start else 0.0
        if expires_at and now > expires_at:
            self.expired_count += 1
            job.error, job.attempt = TaskExpired(), 0
            self._dead_letter(job)
            return True
        return False

    def _delay_again(self, job: Job, message: TaskMessage, wait_s: float) -> bool:
        """Give a message due later back to the broker's delay (confirmed, then acked)."""
        publish_timed = getattr(self.broker, "publish_timed", None)
        if publish_timed is None:
            return False
        try:
            publish_timed(
                self.queue_name, [job.delivery.body], delay_s=wait_s, priority=message.priority
            )
        except BrokerError as exc:
            job.puller.log_for(job).warning(
                "could not send a task due in {:.3g} s back to the delay ({}); held here",
                wait_s,
                exc,
            )
            return False
        job.puller.ack(job.delivery)
        return True

    def _call(self, job: Job, message: TaskMessage) -> tuple[BaseException | None, bool]:
        """Call the user's function: (what it raised or None, whether a retry cannot help)."""
        timeout_s = self.options.task_timeout_s
        timer = gevent.Timeout(timeout_s) if timeout_s else None
        started = time.monotonic()
        try:
            if timer is None:
                result = self._func(*message.args, **message.kwargs)
            else:
                with timer:
                    result = self._func(*message.args, **message.kwargs)
        except GreenletExit:
            raise  # stop() is interrupting us; the message goes back to the queue
        except gevent.Timeout as exc:
            if exc is timer:
                return TimeoutError(f"timed out after {timeout_s:g} s"), False
            return exc, False  # a Timeout of the user's own that escaped: this call failed
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # SystemExit and KeyboardInterrupt raised by the function fail this call only:
            # gevent would otherwise carry them to the main greenlet and end the process.
            return exc, False
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()  # no "never awaited" warning
            never = TypeError(
                "the function returned an awaitable; geboost runs functions in gevent "
                "greenlets and never awaits: write it as a plain function"
            )
            return never, True
        if timer is not None and time.monotonic() - started > timeout_s:
            job.puller.log_for(job).warning(
                "call took {:.3g} s, past task_timeout_s={:g}, and could not be interrupted: "
                "it did not yield to gevent (CPU-bound code cannot be timed out)",
                time.monotonic() - started,
                timeout_s,
            )
        return None, False

    # ----------------------------------------------------------------- dead letters
    def _dead_letter(self, job: Job) -> None:
        """Write the dead letter, then ack; if the write fails, keep the message and retry."""
        if self._write_dead_letter(job):
            return
        # The message stays held (not acked, not requeued with a fresh attempt count), so the
        # function does not run again because a dead letter could not be written.
        delay_s = min(
            self.options.reconnect_interval_s,
            _DEAD_LETTER_FIRST_RETRY_S * 2 ** (job.writes_failed - 1),
        )
        job.puller.log_for(job).error(
            "could not write to dead-letter queue {} (try {}); the message is kept and the "
            "write retried in {:.3g} s",
            self.dead_letter_queue,
            job.writes_failed,
            delay_s,
        )
        self._wait(job, delay_s)

    def _write_dead_letter(self, job: Job) -> bool:
        """One try; True once the letter is written and the original acked."""
        error = job.error
        attempts = job.attempt  # calls made: 0 when the message could not be decoded
        tb = _format_traceback(error)
        letter = DeadLetter(
            queue_name=self.queue_name,
            body=job.delivery.body.decode("utf-8", errors="replace"),
            error=_describe(error),
            attempts=attempts,
            failed_at=time.time(),
            task_id=job.task_id,
            traceback=tb,
        )
        try:
            self.broker.publish(self.dead_letter_queue, [encode(letter)])
        except BrokerError as exc:
            job.writes_failed += 1
            job.puller.log_for(job).debug("dead-letter write failed: {}", exc)
            return False
        job.puller.log_for(job).error(
            "failed after {} attempt(s): {}; sent to dead-letter queue {}{}",
            attempts,
            letter.error,
            self.dead_letter_queue,
            "\n" + tb if tb else "",
        )
        job.puller.ack(job.delivery)
        return True


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, TaskExpired):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _format_traceback(error: BaseException | None) -> str:
    if error is None or error.__traceback__ is None:
        return ""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if len(text) > _TRACEBACK_MAX_CHARS:
        text = "...\n" + text[-_TRACEBACK_MAX_CHARS:]
    return text.rstrip("\n")

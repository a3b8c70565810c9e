"""The engine: ``conn_num`` pullers feeding ONE crew of greenlets bounded by ``concurrent_num``.

The engine owns what the pullers share: the slot semaphore, the crew of greenlets that runs the
calls (``geboost.crew``: kept between calls, not one per call), the bucket that paces starts,
and the jobs waiting for a later attempt (retries and dead-letter writes). Each puller
(``geboost.puller``) owns its receiver, its loop, its acks and its reconnection.

One slot primitive. ``slots`` is a ``BoundedSemaphore(concurrent_num)``: a puller acquires one
slot per message before it fetches, and the call gives it back when it ends (``finally``), so no
path can keep a slot, and starting a call never blocks. That is gevent's ``Pool`` taken apart
(calls plus a semaphore), so that slots can be reserved before the fetch that fills them.

Waiting jobs hold no slot and no greenlet: they sit in one heap ordered by due time. Any puller
starts the due ones at its next step, and every puller's fetch ends by the earliest due time,
so a retry starts on time even when the queue is empty.

The state store (``geboost.state``), when the booster has one: a watcher greenlet reads the
queue's pause flag every 0.5 s (pullers neither fetch nor start calls while it is set) and
keeps this engine's worker registry entry fresh (removed by ``stop``); with
``qps_scope="queue"`` the bucket is a ``FleetBucket`` booking start slots in the store; and,
with ``result_ttl_s`` or ``dedupe_ttl_s`` > 0, ``recorder`` hears of each call's start, retry,
success and dead letter (batched writes, none on the call's path) and acks without calling a
message whose fingerprint already succeeded. Without those options a call costs no store
round trip.

Stopping (``stop``), in this order, so that a message is given back only if its call never
started or was interrupted, and never while its call still runs:
1. ``stopping`` is set: from now on no call starts. A fetch that returns after this gives its
   messages back unstarted; waiting jobs are given back (a pending dead-letter write is tried
   once more first).
2. Running calls get ``timeout_s`` to finish; those still running are killed, and their
   messages given back; the statuses recorded so far are written (up to 5 s).
3. ``drained`` is set: pullers send their last acks and requeues and close their receivers.
When ``stop`` returns, no call of this engine runs any more.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from geboost.brokers.base import Broker, dead_letter_queue
from geboost.codec import CallCodec
from geboost.crew import Crew
from geboost.errors import BrokerError, ConfigurationError, DecodeError, StateStoreError
from geboost.log import queue_logger
from geboost.message import DeadLetter, TaskMessage, encode
from geboost.options import BoostOptions
from geboost.puller import Job, Puller
from geboost.ratelimit import FleetBucket, LeakyBucket, StartPacer
from geboost.state import workers
from geboost.state.base import StateStore
from geboost.state.keys import paused_key, qps_key
from geboost.state.recorder import TaskRecorder

__all__ = ["Engine", "TaskExpired"]

_TRACEBACK_MAX_CHARS = 8000  # the tail of a long traceback is kept: it ends where it failed
_DEAD_LETTER_FIRST_RETRY_S = 1.0  # then doubling, up to reconnect_interval_s
_PAUSE_CHECK_S = 0.5  # how often the pause flag is read: pause/resume reach a worker in < 1 s
# A message fetched before its due time waits in the engine (held, no slot) when it is due
# within this; farther, it goes back to the broker's delay (publish_timed) so that a worker
# never holds long waits (RabbitMQ's delay queues deliver in steps, see brokers/rabbitmq.py).
_HOLD_MAX_S = 1.0
_EARLY_S = 0.001  # closer than this to its due time a message just runs


class TaskExpired(Exception):
    """A task pulled after its expiry time; dead-lettered with the error ``"expired"``."""

    def __str__(self) -> str:
        return "expired"


class Engine:
    """Runs one booster's consumption; created by ``Booster.consume``."""

    def __init__(
        self,
        options: BoostOptions[Any, Any],
        broker: Broker,
        codec: CallCodec,
        state: StateStore | None = None,
    ) -> None:
        self.options = options
        self.broker = broker
        self.queue_name = options.queue_name
        self.dead_letter_queue = dead_letter_queue(options.queue_name)
        self.log = queue_logger(options.queue_name)
        self._func: Callable[..., Any] = options.consume_func
        self._codec = codec
        self.slots = BoundedSemaphore(options.concurrent_num)
        self.calls: Crew[Job] = Crew(self._run)
        self.bucket: StartPacer = LeakyBucket(options.qps_limit)
        if options.qps_scope == "queue" and options.qps_limit > 0:
            if state is None:  # new_booster refuses this; a direct Engine(...) must not pass
                raise ConfigurationError("qps_scope='queue' needs a state store: set state_url")
            self.bucket = FleetBucket(
                state, qps_key(options.queue_name), options.qps_limit, self.log
            )
        self._stopping = Event()
        self.drained = Event()
        self._stopped = Event()
        self.pullers: list[Puller] = []
        self._puller_greenlets: list[Greenlet[Any, None]] = []
        self._waiting: list[tuple[float, int, Job]] = []  # heap of (due, tie-breaker, job)
        self._order = itertools.count()
        # The state store: None when the booster has none (then no pause watcher runs).
        self.state = state
        self.recorder: TaskRecorder | None = None
        if state is not None and (options.result_ttl_s > 0 or options.dedupe_ttl_s > 0):
            self.recorder = TaskRecorder(
                state,
                options.queue_name,
                result_ttl_s=options.result_ttl_s,
                dedupe_ttl_s=options.dedupe_ttl_s,
                log=self.log,
            )
        self._resumed = Event()  # clear while the queue is paused
        if state is None:
            self._resumed.set()  # else the pause watcher's first read decides
        self._pause_watcher: Greenlet[Any, None] | None = None
        self._registry_failing = False
        self.worker = workers.WorkerInfo(
            worker_id=workers.new_worker_id(),
            host=socket.gethostname(),
            pid=os.getpid(),
            queue_name=options.queue_name,
            conn_num=options.conn_num,
            concurrent_num=options.concurrent_num,
            qps_limit=options.qps_limit,
            qps_scope=options.qps_scope,
            started_at=time.time(),
        )
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
        if self.state is not None:
            self._pause_watcher = gevent.spawn(self._watch_state, self.state)
        self.log.info(
            "consuming with {} connection(s), pool of {}, qps_limit {}",
            self.options.conn_num,
            self.options.concurrent_num,
            self.options.qps_limit or "unlimited",
        )

    # ----------------------------------------------------------------- pause (fleet-wide)
    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def wait_resumed(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` while paused; True at once when not (or no longer) paused."""
        return bool(self._resumed.wait(timeout_s))

    def _watch_state(self, state: StateStore) -> None:
        """Read the queue's pause flag every ``_PAUSE_CHECK_S``; pullers do not fetch and do
        not start calls while it is set. Until the first read, the engine counts as paused (a
        worker started while the queue is paused must not take a message first); a store that
        fails leaves the last state known (not paused, if it failed from the start). Also
        keeps this worker's registry entry fresh (every ``WORKER_REFRESH_S``)."""
        key = paused_key(self.queue_name)
        failing = False
        first = True
        registered_at = -math.inf
        while not self.stopping:
            try:
                paused = state.get(key) is not None
            except StateStoreError as exc:
                if not failing:
                    self.log.warning("could not read the pause flag: {}; keeping the last", exc)
                failing = True
                if first:
                    self._resumed.set()
            else:
                failing = False
                self._set_paused(paused, first)
            first = False
            if time.monotonic() - registered_at >= workers.WORKER_REFRESH_S and self._heartbeat(
                state
            ):
                registered_at = time.monotonic()
            self.wait_stopping(_PAUSE_CHECK_S)

    def _heartbeat(self, state: StateStore) -> bool:
        """Register or refresh this worker's registry entry; True if that worked."""
        try:
            workers.register(state, self.worker, ttl_s=workers.WORKER_TTL_S)
        except StateStoreError as exc:
            if not self._registry_failing:
                self.log.warning("could not refresh the worker registry: {}; retrying", exc)
            self._registry_failing = True
            return False
        self._registry_failing = False
        return True

    def _unregister(self) -> None:
        if self.state is None:
            return
        try:
            workers.unregister(self.state, self.queue_name, self.worker.worker_id)
        except StateStoreError as exc:
            self.log.warning(
                "could not leave the worker registry: {}; the entry expires within {:g} s",
                exc,
                workers.WORKER_TTL_S,
            )

    def _set_paused(self, paused: bool, first: bool) -> None:
        if paused and (first or not self.paused):
            self._resumed.clear()
            self.log.info("paused: no new call starts until resume()")
        elif not paused and self.paused:
            self._resumed.set()
            if not first:
                self.log.info("resumed")

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
        if not self.calls.join(max(0.0, deadline - time.monotonic())):
            self.log.warning(
                "{} call(s) still running after {} s are interrupted; "
                "their messages go back to the queue",
                len(self.calls),
                timeout_s,
            )
            self.calls.kill(timeout_s=5)
            if self.calls:
                self.log.error("{} call(s) ignored the interruption and still run", len(self.calls))
        self.calls.close()
        if self.recorder is not None:
            self.recorder.flush(timeout_s=5.0)
        self.drained.set()
        # Pullers leave after their current fetch (at most poll_timeout_s) and close their
        # receivers themselves; bounded so that a dead broker cannot make stop() hang.
        gevent.joinall(self._puller_greenlets, timeout=self.options.poll_timeout_s + 30)
        for g in self._puller_greenlets:
            if not g.dead:
                g.kill(block=False)
        if self._pause_watcher is not None:
            # It leaves by itself at its next check (a kill in the middle of a store call could
            # return a half-read connection to the pool).
            self._pause_watcher.join(timeout=5)
            self._pause_watcher.kill(block=False)
        self._unregister()
        self.broker.close()
        if self.state is not None:
            # Idle connections go, like the broker's: a stopped booster holds none. The store
            # is shared by the process's boosters; anything still using it reconnects.
            self.state.close()
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
        self.calls.start(job)

    def _run(self, job: Job) -> None:
        """One step of one message, in a slot. Never raises (except GreenletExit)."""
        try:
            if job.writes_failed:
                self._dead_letter(job)
            elif self.stopping:
                # Spawned before stop() began but not run yet: the call has not started, so it
                # does not start now; the message goes back.
                job.puller.give_back([job.delivery])
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
        recorder = self.recorder
        if recorder is not None:
            if job.attempt == 1 and self._done_before(job, recorder, message):
                return
            recorder.started(message)
        error, final = self._call(job, message)
        if error is None:
            if recorder is not None:
                recorder.succeeded(message, job.value)
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
        if recorder is not None:
            recorder.retrying(message)
        self._wait(job, delay_s)

    def _done_before(self, job: Job, recorder: TaskRecorder, message: TaskMessage) -> bool:
        """Dedupe at consume: True (and the message acked, not run) if a call with the same
        fingerprint succeeded within ``dedupe_ttl_s``. A store that fails lets the call run."""
        try:
            earlier = recorder.done_before(message)
        except StateStoreError as exc:
            job.puller.log_for(job).warning("dedupe check failed ({}); running the call", exc)
            return False
        if earlier is None:
            return False
        job.puller.log_for(job).info("skipped: the same call succeeded as task {}", earlier)
        recorder.skipped(message, earlier)
        job.puller.ack(job.delivery)
        return True

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
        started = time.monotonic() if timer is not None else 0.0
        try:
            if timer is None:
                result = job.value = self._func(*message.args, **message.kwargs)
            else:
                with timer:
                    result = job.value = self._func(*message.args, **message.kwargs)
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
        if result is not None and inspect.isawaitable(result):  # None: skip the ABC check
            close = getattr(result, "close", None)
            if close is not None:
                close()  # no "never awaited" warning
            never = TypeError(
                "the function returned an awaitable; geboost runs functions in gevent "
                "greenlets and never awaits: write it as a plain function"
            )
            return never, True
        took_s = time.monotonic() - started if timer is not None else 0.0
        if took_s > timeout_s:
            job.puller.log_for(job).warning(
                "call took {:.3g} s, past task_timeout_s={:g}, and could not be interrupted: "
                "it did not yield to gevent (CPU-bound code cannot be timed out)",
                took_s,
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
        if self.recorder is not None:
            self.recorder.failed(job.task_id, _error_type(error), str(error), tb)
        job.puller.ack(job.delivery)
        return True


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, TaskExpired):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _error_type(error: BaseException | None) -> str:
    return type(error).__name__ if error is not None else "unknown error"


def _format_traceback(error: BaseException | None) -> str:
    if error is None or error.__traceback__ is None:
        return ""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if len(text) > _TRACEBACK_MAX_CHARS:
        text = "...\n" + text[-_TRACEBACK_MAX_CHARS:]
    return text.rstrip("\n")

"""The engine: ``conn_num`` puller greenlets feeding ONE gevent ``Pool(concurrent_num)``.

Each puller owns one receiver (one broker connection) and is the only greenlet that touches it.
Its loop: send the acks its finished calls left behind, reserve free pool slots, fetch at most
that many messages, and start each one (paced by the shared leaky bucket). Reserving slots
before fetching is what keeps ``pool.spawn`` from ever blocking and bounds the messages that sit
pulled-but-not-started: at most ``min(fetch_batch, free slots)`` per puller, and at most about
one second of work when ``qps_limit`` is set.

Failure handling, each in one place:
- a call that raises is retried by ``_schedule_retry`` after an exponential backoff, on a timer
  that holds no pool slot; after ``max_retries`` the message is dead-lettered (``_dead_letter``);
- a broker error in a puller goes to ``_recover``: log, then a new connection every
  ``reconnect_interval_s``, forever; acks of calls that finished meanwhile are kept and sent
  once the connection is back. Pullers are never killed while inside the broker (a killed pop
  can lose a message): ``stop`` raises a flag and each puller leaves after its current fetch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit
from gevent.event import Event
from gevent.pool import Pool

from geboost.brokers.base import Broker, Delivery, Receiver
from geboost.codec import CallCodec
from geboost.errors import BrokerError, DecodeError
from geboost.log import queue_logger
from geboost.message import DeadLetter, TaskMessage, encode
from geboost.options import BoostOptions
from geboost.ratelimit import LeakyBucket

__all__ = ["Engine"]

_IDLE_WAIT_S = 0.2  # longest a puller waits for a free slot before servicing its connection
_BUSY_FETCH_S = 0.02  # fetch slice while this puller's calls run, so their acks go out soon


class _Puller:
    """A puller's state: its receiver and what worker greenlets hand back to it."""

    __slots__ = ("index", "outstanding", "receiver", "to_ack", "to_requeue")

    def __init__(self, index: int, receiver: Receiver) -> None:
        self.index = index
        self.receiver = receiver
        self.outstanding = 0  # fetched through this receiver and not yet acked or requeued
        self.to_ack: list[Delivery] = []
        self.to_requeue: list[Delivery] = []


class _Job:
    """One message on its way through the pool, possibly several attempts."""

    __slots__ = ("attempt", "delivery", "message", "puller")

    def __init__(self, puller: _Puller, delivery: Delivery) -> None:
        self.puller = puller
        self.delivery = delivery
        self.message: TaskMessage | None = None
        self.attempt = 1


class Engine:
    """Runs one booster's consumption; created by ``Booster.consume``."""

    def __init__(self, options: BoostOptions[Any, Any], broker: Broker, codec: CallCodec) -> None:
        self._opts = options
        self._broker = broker
        self._queue = options.queue_name
        self._dlq = options.queue_name + ".dlq"
        self._func: Callable[..., Any] = options.consume_func
        self._codec = codec
        self._log = queue_logger(options.queue_name)
        self._pool = Pool(options.concurrent_num)
        self._free_slots = options.concurrent_num
        self._slot_freed = Event()
        self._bucket = LeakyBucket(options.qps_limit)
        self._stopping = Event()
        self._drained = Event()
        self._stopped = Event()
        self._pullers: list[_Puller] = []
        self._puller_greenlets: list[Greenlet[Any, None]] = []
        self._retry_timers: dict[_Job, Greenlet[Any, None]] = {}
        self._unstarted = 0  # fetched, waiting for the rate limiter
        self._running = 0  # calls in the pool
        self._retries_due = 0  # retry timers that fired and wait for a slot
        if options.qps_limit > 0:
            self._batch_cap = min(options.fetch_batch, max(1, math.ceil(options.qps_limit)))
        else:
            self._batch_cap = options.fetch_batch

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # What each receiver's owner can start soon: its share of the pool plus a quarter, so
        # that a broker pushing ahead (RabbitMQ) has the next messages at hand when slots free
        # (measured: io-fanout@500 on RabbitMQ 1.13 s -> 1.10 s), and no more than that.
        window = math.ceil(self._opts.concurrent_num * 1.25 / self._opts.conn_num)
        for index in range(self._opts.conn_num):
            receiver = self._broker.open_receiver(self._queue, window=window)
            puller = _Puller(index, receiver)
            self._pullers.append(puller)
            self._puller_greenlets.append(gevent.spawn(self._pull_forever, puller))
        self._log.info(
            "consuming with {} connection(s), pool of {}, qps_limit {}",
            self._opts.conn_num,
            self._opts.concurrent_num,
            self._opts.qps_limit or "unlimited",
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def is_idle(self) -> bool:
        """No call running, waiting for a retry or for its ack to be sent."""
        return (
            self._running == 0
            and not self._retry_timers
            and self._unstarted == 0
            and not any(p.to_ack or p.to_requeue for p in self._pullers)
        )

    def stop(self, timeout_s: float) -> None:
        """Stop pulling, let running calls finish for up to ``timeout_s``, settle, close."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._log.info("stopping: running calls get up to {} s to finish", timeout_s)
        for job, timer in list(self._retry_timers.items()):
            # A retry that has not started yet goes back to the broker, not lost, not run here.
            timer.kill(block=False)
            job.puller.to_requeue.append(job.delivery)
        self._retry_timers.clear()
        if not self._pool.join(timeout=max(0.0, deadline - time.monotonic())):
            self._log.warning(
                "{} call(s) still running after {} s are interrupted; "
                "their messages go back to the queue",
                len(self._pool),
                timeout_s,
            )
            self._pool.kill(block=True, timeout=5)
        self._drained.set()
        # Pullers leave after their current fetch (at most poll_timeout_s) and close their
        # receivers themselves; bounded so that a dead broker cannot make stop() hang.
        gevent.joinall(self._puller_greenlets, timeout=self._opts.poll_timeout_s + 30)
        for g in self._puller_greenlets:
            if not g.dead:
                g.kill(block=False)
        self._broker.close()
        self._stopped.set()
        self._log.info("stopped")

    def wait_stopped(self, timeout_s: float | None) -> bool:
        return bool(self._stopped.wait(timeout_s))

    # ----------------------------------------------------------------- pulling
    def _pull_forever(self, puller: _Puller) -> None:
        while not self._stopping.is_set():
            try:
                self._pull_once(puller)
            except BrokerError as exc:
                self._recover(puller, exc)
            except Exception:
                # A bug here must not end consumption: log it with the traceback and go on.
                self._log.exception("puller {} hit an unexpected error; continuing", puller.index)
                self._stopping.wait(1.0)
        self._wait_drained(puller)
        self._settle_and_close(puller)

    def _pull_once(self, puller: _Puller) -> None:
        self._flush(puller)
        # Retries due now go first: a puller blocked in an empty fetch would otherwise keep
        # every free slot reserved and starve them.
        wanted = min(self._batch_cap, self._free_slots - self._retries_due)
        if wanted <= 0:
            self._slot_freed.clear()
            self._slot_freed.wait(_IDLE_WAIT_S)
            puller.receiver.keepalive()
            return
        self._free_slots -= wanted  # reserved before the fetch yields to other pullers
        # While calls of this puller are under way, fetch in short slices: their acks can
        # only be sent between fetches, and a broker with a delivery window (RabbitMQ's
        # prefetch) sends nothing more until it gets them.
        timeout_s = self._opts.poll_timeout_s
        if puller.outstanding:
            timeout_s = min(timeout_s, _BUSY_FETCH_S)
        got: list[Delivery] | tuple[()] = ()
        try:
            got = list(puller.receiver.fetch(wanted, timeout_s))
        finally:
            self._free_slots += wanted - len(got)
        puller.outstanding += len(got)
        self._start_all(puller, got)

    def _start_all(self, puller: _Puller, deliveries: list[Delivery]) -> None:
        """Start each fetched message, waiting for the rate limiter between them.

        What is not started (we are stopping, or the connection broke while we waited) goes
        back to the broker, and its reserved slots back to the pool.
        """
        self._unstarted += len(deliveries)
        started = 0
        try:
            for delivery in deliveries:
                if not self._bucket.unlimited and not self._wait_for_slot_time(puller):
                    break
                started += 1
                self._unstarted -= 1
                self._running += 1
                self._pool.spawn(self._run, _Job(puller, delivery))
        finally:
            rest = deliveries[started:]
            if rest:
                self._unstarted -= len(rest)
                self._free_slots += len(rest)
                puller.to_requeue.extend(rest)

    def _wait_for_slot_time(self, puller: _Puller) -> bool:
        """Sleep until the bucket's next slot, servicing the connection; False if stopping."""
        wake_at = time.monotonic() + self._bucket.reserve()
        while True:
            remaining = wake_at - time.monotonic()
            if remaining <= 0:
                return True
            if self._stopping.wait(min(remaining, _IDLE_WAIT_S)):
                return False
            puller.receiver.keepalive()

    def _flush(self, puller: _Puller) -> None:
        """Send the acks and requeues that worker greenlets left for this puller."""
        if puller.to_ack:
            batch, puller.to_ack = puller.to_ack, []
            try:
                puller.receiver.ack(batch)
            except BaseException:
                puller.to_ack[:0] = batch  # kept for the next connection
                raise
            puller.outstanding -= len(batch)
        if puller.to_requeue:
            batch, puller.to_requeue = puller.to_requeue, []
            try:
                puller.receiver.requeue(batch)
            except BaseException:
                puller.to_requeue[:0] = batch
                raise
            puller.outstanding -= len(batch)

    def _recover(self, puller: _Puller, exc: BaseException) -> None:
        """Try a new connection every reconnect_interval_s until it works or we stop."""
        interval = self._opts.reconnect_interval_s
        self._log.error(
            "puller {} lost its broker connection: {}; trying a new connection in {} s",
            puller.index,
            exc,
            interval,
        )
        while not self._stopping.wait(interval):
            try:
                puller.receiver.reconnect()
            except BrokerError as again:
                self._log.error(
                    "puller {} could not reconnect: {}; next try in {} s",
                    puller.index,
                    again,
                    interval,
                )
                continue
            self._log.info("puller {} reconnected; resuming", puller.index)
            return

    def _wait_drained(self, puller: _Puller) -> None:
        """While stop() lets calls finish, keep sending their acks and servicing heartbeats:
        a RabbitMQ connection left silent for two heartbeats would be closed, and every
        message on it delivered again."""
        while not self._drained.wait(_IDLE_WAIT_S):
            try:
                self._flush(puller)
                puller.receiver.keepalive()
            except BrokerError:
                pass  # the final flush below reports it; the broker redelivers what is unacked

    def _settle_and_close(self, puller: _Puller) -> None:
        try:
            self._flush(puller)
        except BrokerError as exc:
            # Unsent acks are not lost messages: the broker redelivers them (at-least-once).
            self._log.warning(
                "puller {} could not send its last acks ({}); those messages may run again",
                puller.index,
                exc,
            )
        puller.receiver.close()

    # ----------------------------------------------------------------- running calls
    def _run(self, job: _Job) -> None:
        """One attempt of one message, in a pool slot. Never raises (except GreenletExit)."""
        try:
            message = job.message
            if message is None:
                try:
                    message = job.message = self._codec.decode(job.delivery.body)
                except DecodeError as exc:
                    if exc.task_id:
                        job.message = TaskMessage(task_id=exc.task_id)
                    self._dead_letter(job, exc, attempts=0)
                    return
            error = self._call(message)
            if error is None:
                job.puller.to_ack.append(job.delivery)
            elif job.attempt <= self._opts.max_retries:
                self._schedule_retry(job, error)
            else:
                self._dead_letter(job, error, attempts=job.attempt)
        finally:
            self._running -= 1
            self._free_slots += 1
            self._slot_freed.set()

    def _call(self, message: TaskMessage) -> BaseException | None:
        """Call the user's function; returns what it raised, or None on success."""
        try:
            if self._opts.task_timeout_s:
                with gevent.Timeout(self._opts.task_timeout_s):
                    self._func(*message.args, **message.kwargs)
            else:
                self._func(*message.args, **message.kwargs)
        except GreenletExit:
            raise  # stop() is interrupting us; the message goes back to the queue
        except (Exception, SystemExit, gevent.Timeout) as exc:
            # SystemExit and a Timeout escaping the user's code are failures of this call,
            # not of the process: gevent would otherwise carry SystemExit to the main greenlet.
            return exc
        return None

    def _schedule_retry(self, job: _Job, error: BaseException) -> None:
        opts = self._opts
        delay_s = min(opts.retry_backoff_max_s, opts.retry_backoff_s * 2 ** (job.attempt - 1))
        self._log.bind(task_id=_task_id(job)).warning(
            "attempt {}/{} failed: {!r}; retrying in {:.3g} s",
            job.attempt,
            opts.max_retries + 1,
            error,
            delay_s,
        )
        job.attempt += 1
        self._retry_timers[job] = gevent.spawn_later(delay_s, self._retry, job)

    def _retry(self, job: _Job) -> None:
        """Timer callback: wait for a free slot and the rate limiter, then run again."""
        self._retries_due += 1
        try:
            while self._free_slots == 0:
                self._slot_freed.clear()
                self._slot_freed.wait(_IDLE_WAIT_S)
        finally:
            self._retries_due -= 1
        self._free_slots -= 1
        if not self._bucket.unlimited:
            gevent.sleep(self._bucket.reserve())
        self._retry_timers.pop(job, None)
        self._running += 1
        self._pool.spawn(self._run, job)  # the slot reserved above is given back by _run

    def _dead_letter(self, job: _Job, error: BaseException, *, attempts: int) -> None:
        """Park the message in <queue>.dlq with its error, then ack the original."""
        body = job.delivery.body
        letter = DeadLetter(
            queue_name=self._queue,
            body=body.decode("utf-8", errors="replace"),
            error=f"{type(error).__name__}: {error}",
            attempts=attempts,
            failed_at=time.time(),
            task_id=_task_id(job),
        )
        log = self._log.bind(task_id=letter.task_id or "-")
        try:
            self._broker.publish(self._dlq, [encode(letter)])
        except BrokerError as exc:
            log.error(
                "could not dead-letter after {} attempt(s) ({}); "
                "the message goes back to the queue",
                attempts,
                exc,
            )
            job.puller.to_requeue.append(job.delivery)
            return
        log.error(
            "failed after {} attempt(s): {}; sent to dead-letter queue {}",
            attempts,
            letter.error,
            self._dlq,
        )
        job.puller.to_ack.append(job.delivery)


def _task_id(job: _Job) -> str:
    return job.message.task_id if job.message is not None else ""

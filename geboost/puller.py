"""One puller: its receiver, its loop, its acks and its reconnection.

A puller is the only greenlet that touches its receiver (one broker connection). Worker
greenlets hand it finished deliveries (``ack``) and deliveries to give back (``give_back``);
it sends them in batches between fetches. Its loop, one ``_step`` at a time:

1. send the acks and requeues left for it;
2. start the waiting jobs (retries, dead-letter writes) that are due, each in a free slot;
3. reserve the free slots (at most ``batch_cap``) and fetch at most that many messages, waiting
   at most ``poll_timeout_s``, or 20 ms while its own calls run (their acks can only leave
   between fetches, and RabbitMQ sends nothing more until it gets them), and never past the
   time the next waiting job is due;
4. start each fetched message, paced by the engine's bucket (``LeakyBucket``, or with
   ``qps_scope="queue"`` the ``FleetBucket`` that books slots for the whole fleet).

A receiver whose fetch is one request and one reply (``round_trip_fetch``: Redis; nothing
arrives between fetches) is driven differently in two ways. A fetch asks for at most half the
pool, so that one half's calls run while the next half is on its way and the worker does not
idle a round trip per batch (measured on Redis consume-noop: worker CPU 0.8 -> 1.0). And while
its calls run, a fetch does not wait in the broker: when it finds nothing, the puller waits on
its own until one of its calls finishes (at most 20 ms), so acks leave at once rather than
after a slice (measured: ``push().get()`` on an idle Redis worker 22 ms -> about 1.2 ms).

While the queue is paused (``Booster.pause``, read by the engine's watcher), a step fetches
nothing and starts nothing; messages fetched when the pause arrives go back at once.

A fetch that returns once ``stop`` has begun starts nothing: its messages go back at once. A
broker error sends the puller to ``_reconnect``: log, then a new connection every
``reconnect_interval_s``, forever; acks of calls that finished meanwhile are kept and sent once
the connection is back. Pullers are never killed inside the broker (a killed pop can lose a
message): ``stop`` raises a flag and each puller leaves after its current fetch.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from gevent.event import Event

from geboost.brokers.base import Delivery, Receiver
from geboost.errors import BrokerError
from geboost.message import TaskMessage

if TYPE_CHECKING:
    from geboost.engine import Engine
    from geboost.log import QueueLogger

__all__ = ["Job", "Puller"]

_IDLE_WAIT_S = 0.2  # longest a puller waits for a free slot before servicing its connection
_BUSY_FETCH_S = 0.02  # fetch slice while this puller's calls run, so their acks go out soon
_BOOK_RETRY_S = 1.0  # a fleet bucket that could not book slots is asked again this often


class Job:
    """One message on its way through the engine, over one or more attempts."""

    __slots__ = ("attempt", "delivery", "error", "message", "puller", "value", "writes_failed")

    def __init__(self, puller: Puller, delivery: Delivery) -> None:
        self.puller = puller
        self.delivery = delivery
        self.message: TaskMessage | None = None
        self.attempt = 1  # the attempt the next call makes
        self.error: BaseException | None = None  # the last attempt's failure
        self.writes_failed = 0  # dead-letter writes that failed; > 0 means "to dead-letter"
        self.value: Any = None  # what the last successful call returned

    @property
    def task_id(self) -> str:
        return self.message.task_id if self.message is not None else ""


class Puller:
    """See the module docstring. ``run`` is the greenlet's body."""

    def __init__(self, engine: Engine, index: int, receiver: Receiver) -> None:
        self._engine = engine
        self.index = index
        self.receiver = receiver
        self.running = 0  # this puller's messages whose step runs in the group now
        self._in_hand = 0  # taken from the broker or the waiting heap, not started yet
        self._to_ack: list[Delivery] = []
        self._to_requeue: list[Delivery] = []
        self._log = engine.log
        self._fetch_cap = engine.batch_cap
        self._round_trip = bool(getattr(receiver, "round_trip_fetch", False))
        if self._round_trip:  # see the module docstring
            half = max(1, math.ceil(engine.options.concurrent_num / 2))
            self._fetch_cap = min(self._fetch_cap, half)
        self._settle_waiting = False  # the loop waits for a call of its own to finish
        self._settled = Event()

    def is_idle(self) -> bool:
        return not (self.running or self._in_hand or self._to_ack or self._to_requeue)

    # ----------------------------------------------------------------- for worker greenlets
    def ack(self, delivery: Delivery) -> None:
        self._to_ack.append(delivery)
        if self._settle_waiting:
            self._settled.set()

    def give_back(self, deliveries: list[Delivery]) -> None:
        self._to_requeue.extend(deliveries)
        if self._settle_waiting:
            self._settled.set()

    def log_for(self, job: Job) -> QueueLogger:
        return self._log.bind(task_id=job.task_id or "-")

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        engine = self._engine
        while not engine.stopping:
            try:
                self._step()
            except BrokerError as exc:
                self._reconnect(exc)
            except Exception:
                # A bug here must not end consumption: log it with the traceback and go on.
                self._log.exception("puller {} hit an unexpected error; continuing", self.index)
                engine.wait_stopping(1.0)
        self._drain()
        self._close()

    def _step(self) -> None:
        engine = self._engine
        self._flush()
        if engine.paused:
            # Paused fleet-wide: nothing is fetched (messages stay in the broker) and no
            # waiting job starts; the connection is kept alive meanwhile.
            engine.wait_resumed(_IDLE_WAIT_S)
            self.receiver.keepalive()
            return
        if not self._start_due():
            return
        want = min(self._fetch_cap, engine.slots.counter)
        if want <= 0:
            if not engine.slots.wait(_IDLE_WAIT_S):
                # Only when no slot freed for a while: otherwise the next fetch comes at once
                # and services the connection itself (and on Redis carries the acks).
                self.receiver.keepalive()
            return
        for _ in range(want):  # never yields: the counter said they are free
            engine.slots.acquire(blocking=False)
        got: list[Delivery] = []
        timeout_s = self._fetch_timeout_s()
        wait_here = self._round_trip and timeout_s <= _BUSY_FETCH_S
        try:
            got = list(self.receiver.fetch(want, 0.0 if wait_here else timeout_s))
        finally:
            for _ in range(want - len(got)):
                engine.slots.release()
        self._start_fetched(got)
        if wait_here and not got:
            self._wait_settled(timeout_s)

    def _wait_settled(self, timeout_s: float) -> None:
        """Up to ``timeout_s``, until a call of this puller finishes (its ack or give-back
        is then ready to leave with the next fetch)."""
        if self._to_ack or self._to_requeue or timeout_s <= 0:
            return
        self._settled.clear()
        self._settle_waiting = True
        try:
            self._settled.wait(timeout_s)
        finally:
            self._settle_waiting = False

    def _fetch_timeout_s(self) -> float:
        timeout_s = self._engine.options.poll_timeout_s
        # Busy: calls of ours run, or finished since the flush (sending acks can yield: pika
        # drives its connection, and the calls run meanwhile); their acks must not wait for a
        # whole poll (measured: the last acks of a RabbitMQ burst came 1 s late).
        if self.running or self._to_ack or self._to_requeue:
            timeout_s = min(timeout_s, _BUSY_FETCH_S)
        due = self._engine.next_due()
        if due is not None:
            timeout_s = min(timeout_s, max(0.0, due - time.monotonic()))
        return timeout_s

    def _start_fetched(self, got: list[Delivery]) -> None:
        """Start each fetched message (a slot is held for each); give back what cannot start."""
        engine = self._engine
        self._in_hand += len(got)
        started = 0
        try:
            for delivery in got:
                if engine.stopping or engine.paused or not self._wait_start_time():
                    break
                started += 1
                self._in_hand -= 1
                engine.start_job(Job(self, delivery))
        finally:
            rest = got[started:]
            if rest:
                self._in_hand -= len(rest)
                for _ in rest:
                    engine.slots.release()
                self.give_back(rest)
                if engine.stopping or engine.paused:
                    self._flush_quietly()  # back at once, not after the running calls end

    def _start_due(self) -> bool:
        """Start the waiting jobs that are due; False if one must wait for a free slot."""
        engine = self._engine
        while (job := engine.pop_due()) is not None:
            if not engine.slots.acquire(blocking=False):
                engine.put_back(job)
                if not engine.slots.wait(_IDLE_WAIT_S):
                    self.receiver.keepalive()
                return False
            self._in_hand += 1
            try:
                # Dead-letter writes are not calls: the rate limit does not apply to them.
                ready = job.writes_failed > 0 or self._wait_start_time()
            finally:
                self._in_hand -= 1
            if ready and not engine.stopping:
                engine.start_job(job)
            else:
                engine.slots.release()
                engine.put_back(job)  # gives it back when stopping
        return True

    def _wait_start_time(self) -> bool:
        """Sleep until the bucket's next start time, servicing the connection; False if
        stopping began meanwhile. A fleet bucket whose store fails books nothing: then no
        call starts (the fleet's limit holds) and the booking is tried again every second."""
        engine = self._engine
        if engine.bucket.unlimited:
            return True
        while (wait_s := engine.bucket.reserve()) is None:
            if engine.wait_stopping(_BOOK_RETRY_S):
                return False
            self.receiver.keepalive()
        wake_at = time.monotonic() + wait_s
        while True:
            remaining = wake_at - time.monotonic()
            if remaining <= 0:
                return not engine.stopping
            if engine.wait_stopping(min(remaining, _IDLE_WAIT_S)):
                return False
            self.receiver.keepalive()

    # ----------------------------------------------------------------- acks and the connection
    def _flush(self) -> None:
        """Send the acks and requeues that worker greenlets left for this puller."""
        if self._to_ack:
            batch, self._to_ack = self._to_ack, []
            try:
                self.receiver.ack(batch)
            except BaseException:
                self._to_ack[:0] = batch  # kept for the next connection
                raise
        if self._to_requeue:
            batch, self._to_requeue = self._to_requeue, []
            try:
                self.receiver.requeue(batch)
            except BaseException:
                self._to_requeue[:0] = batch
                raise

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except BrokerError:
            pass  # kept; the final flush reports it, and the broker redelivers what is unacked

    def _reconnect(self, exc: BaseException) -> None:
        """Try a new connection every reconnect_interval_s until it works or we stop."""
        interval = self._engine.options.reconnect_interval_s
        self._log.error(
            "puller {} lost its broker connection: {}; trying a new connection in {} s",
            self.index,
            exc,
            interval,
        )
        while not self._engine.wait_stopping(interval):
            try:
                self.receiver.reconnect()
            except BrokerError as again:
                self._log.error(
                    "puller {} could not reconnect: {}; next try in {} s",
                    self.index,
                    again,
                    interval,
                )
                continue
            self._log.info("puller {} reconnected; resuming", self.index)
            return

    def _drain(self) -> None:
        """While stop() lets calls finish, keep sending their acks and servicing heartbeats:
        a RabbitMQ connection left silent for two heartbeats would be closed, and every
        message on it delivered again."""
        while True:
            self._flush_quietly()
            try:
                self.receiver.keepalive()
            except BrokerError:
                pass
            if self._engine.drained.wait(_IDLE_WAIT_S):
                return

    def _close(self) -> None:
        try:
            self._flush()
        except BrokerError as exc:
            # Unsent acks are not lost messages: the broker redelivers them (at-least-once).
            self._log.warning(
                "puller {} could not send its last acks ({}); those messages may run again",
                self.index,
                exc,
            )
        self.receiver.close()

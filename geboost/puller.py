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
arrives between fetches) is driven differently in three ways. A fetch asks for at most half
the pool, so that one half's calls run while the next half is on its way. While its calls
run, a fetch does not wait in the broker: when it finds nothing, the puller waits on its own
until one of its calls finishes (at most 20 ms), so acks leave at once rather than after a
slice (measured: ``push().get()`` on an idle Redis worker 22 ms -> about 1.2 ms). And when a
batch came back full and its calls are quick, the puller takes ahead (``_send_ahead``, with a
receiver that has ``send_ahead``): it lets the calls just started run, then sends takes for
the slots they freed at once, up to two on their way, their slots held meanwhile; the next
steps hand those batches out, oldest first. Without that, quick calls finished long before
the next batch's reply came back and the worker idled a round trip per batch (measured on
Redis consume-noop, 2-core VM: worker CPU 0.8 -> 1.0, about 90k -> 115-155k calls/s). There
is no taking ahead with a rate limit, while retries are due, or for less than half a fetch.

While the queue is paused (``Booster.pause``, read by the engine's watcher), a step fetches
nothing and starts nothing; messages fetched when the pause arrives, and those of takes on
their way, go back at once.

A fetch that returns once ``stop`` has begun starts nothing: its messages go back at once, as
do those of takes still on their way. A
broker error sends the puller to ``_reconnect``: log, then a new connection every
``reconnect_interval_s``, forever; acks of calls that finished meanwhile are kept and sent once
the connection is back. Pullers are never killed inside the broker (a killed pop can lose a
message): ``stop`` raises a flag and each puller leaves after its current fetch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
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
_AHEAD_MAX = 2  # takes a round-trip receiver may have on their way (see Puller._send_ahead)


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
        # Slots held for each take the receiver sent ahead, oldest first (see _send_ahead).
        self._ahead: deque[int] = deque()
        self._can_send_ahead = self._round_trip and hasattr(receiver, "send_ahead")

    def is_idle(self) -> bool:
        return not (
            self.running or self._in_hand or self._ahead or self._to_ack or self._to_requeue
        )

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
        self._give_back_ahead()
        self._drain()
        self._close()

    def _step(self) -> None:
        engine = self._engine
        self._flush()
        if engine.paused:
            # Paused fleet-wide: nothing is fetched (messages stay in the broker) and no
            # waiting job starts; the connection is kept alive meanwhile.
            self._give_back_ahead()
            engine.wait_resumed(_IDLE_WAIT_S)
            self.receiver.keepalive()
            return
        if not self._start_due():
            return
        if self._ahead:  # a take is on its way, its slots held: read it
            want = self._ahead.popleft()
        else:
            want = min(self._fetch_cap, engine.slots.counter)
            if want <= 0:
                if not engine.slots.wait(_IDLE_WAIT_S):
                    # Only when no slot freed for a while: otherwise the next fetch comes at
                    # once and services the connection itself (and on Redis carries the acks).
                    self.receiver.keepalive()
                return
            self._hold_slots(want)
        got: list[Delivery] = []
        timeout_s = self._fetch_timeout_s()
        wait_here = self._round_trip and timeout_s <= _BUSY_FETCH_S
        try:
            got = list(self.receiver.fetch(want, 0.0 if wait_here else timeout_s))
        except BaseException:
            self._drop_ahead()  # a take sent ahead by this fetch is lost with it
            raise
        finally:
            self._free_slots(want - len(got))
        self._start_fetched(got)
        if wait_here and not got:
            self._wait_settled(timeout_s)
        elif self._can_send_ahead and got and len(got) == want:
            self._send_ahead()

    def _send_ahead(self) -> None:
        """After a full batch (more is probably waiting), with a receiver that can: send takes
        for the free slots at once, up to ``_AHEAD_MAX`` on their way, their slots held from
        now on, so that the server prepares the next batches while these calls run and their
        replies are there when the puller wants them (no round trip waited for between two
        batches). Only at full speed: not with a rate limit (the messages would wait in
        hand), nor while retries are due, nor for less than half a fetch (a round trip for a
        few messages costs more than it saves)."""
        engine = self._engine
        if len(self._ahead) >= _AHEAD_MAX or engine.stopping or not engine.bucket.unlimited:
            return
        gevent.sleep(0)  # the calls just started run first: quick ones free their slots now
        floor = max(1, self._fetch_cap // 2)
        while len(self._ahead) < _AHEAD_MAX and not (engine.stopping or engine.paused):
            due = engine.next_due()
            count = min(self._fetch_cap, engine.slots.counter)
            if count < floor or (due is not None and due <= time.monotonic()):
                return
            self._hold_slots(count)
            self._ahead.append(count)
            try:
                self.receiver.send_ahead(count)  # type: ignore[attr-defined]
            except BaseException:
                self._drop_ahead()
                raise

    def _drop_ahead(self) -> None:
        """The takes sent ahead are lost (with the connection): their slots come back; their
        messages, held on the server, go back as the receiver reconnects or closes."""
        self._free_slots(sum(self._ahead))
        self._ahead.clear()

    def _give_back_ahead(self) -> None:
        """Pausing or stopping: read the takes on their way, if any, and give their messages
        back at once."""
        while self._ahead:
            held = self._ahead.popleft()
            got: list[Delivery] = []
            try:
                got = list(self.receiver.fetch(held, 0.0))
            except BrokerError:
                self._drop_ahead()  # the receiver dropped them all with its connection
            finally:
                self._free_slots(held)
            if got:
                self.give_back(got)
        self._flush_quietly()

    def _hold_slots(self, count: int) -> None:
        """Take ``count`` slots the caller saw free in the counter (never yields)."""
        for _ in range(count):
            self._engine.slots.acquire(blocking=False)

    def _free_slots(self, count: int) -> None:
        for _ in range(count):
            self._engine.slots.release()

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
                self._free_slots(len(rest))
                self.give_back(rest)
                if engine.stopping or engine.paused:
                    self._flush_quietly()  # back at once, not after the running calls end

    def _start_due(self) -> bool:
        """Start the waiting jobs that are due; False if one must wait for a free slot."""
        engine = self._engine
        while (job := engine.pop_due()) is not None:
            if not engine.slots.acquire(blocking=False):
                engine.put_back(job)
                if self._ahead:
                    return True  # the slots are held by takes sent ahead: hand those out first
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

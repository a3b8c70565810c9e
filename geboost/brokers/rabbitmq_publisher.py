"""The broker's own RabbitMQ connection (publish, count, purge), owned by ONE greenlet.

Why an owner greenlet rather than a lock: a pika connection must only ever be driven by one
greenlet, and it must be driven regularly even when nobody publishes, or RabbitMQ closes it
for missed heartbeats and the next push pays a failed attempt plus a retry interval. The owner
waits for requests on a gevent queue and, between requests, services the heartbeats. Callers
(any number of greenlets) put a request and wait on its ``AsyncResult``. A side benefit: the
owner merges publish requests that queued up meanwhile into one confirmed batch, so 200
greenlets pushing at once cost a few confirm round trips, not 200.

Confirms are counted here rather than by pika's ``BlockingChannel``, which waits for the
broker's confirm after EACH message. Confirm mode is switched on through the channel's
asynchronous core (``channel._impl``, pika's ``Channel``), the whole batch is written, and the
connection is driven until every delivery tag is acked (or nacked).

When RabbitMQ refuses a message it closes the channel (406 for a body over its
``max_message_size``, 403 without write permission) and drops every confirm it still owed on that
channel. A close callback on the channel records the reason and wakes the confirm wait at once.
Each request then learns how many of its LEADING bodies were confirmed (``BrokerError.accepted``):
the caller retries only the rest. So that this count is exact, a large body (where a refusal is
likely) is written only once everything before it is confirmed; what was written after the
refused message never reaches a queue (RabbitMQ ignores a closing channel's frames).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import pika
import pika.exceptions
import pika.spec
from gevent import Greenlet
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue

from geboost.brokers.rabbitmq_config import (
    PIKA_ERRORS,
    RabbitSettings,
    close_quietly,
    declare,
    open_channel,
    translate,
)
from geboost.errors import BrokerConnectionError, BrokerError, MessageRefusedError
from geboost.log import queue_logger

__all__ = ["Publisher"]

_PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
_NOT_FOUND = 404
IDLE_CLOSE_S = 60.0  # the owner closes the connection and ends after this long without calls
# Bodies larger than this wait for the confirms of everything written before them (see the
# module docstring). One round trip per large body is small beside its transfer time.
CONFIRM_BEFORE_BYTES = 1 << 20

Action = Callable[[Any], int]
_PUBLISH_ERRORS: tuple[type[Exception], ...] = (*PIKA_ERRORS, BrokerError)


class _Request:
    """One caller's wish: publish ``bodies`` (``action`` None) or run ``action`` on the channel."""

    __slots__ = (
        "action",
        "bodies",
        "closing",
        "first_tag",
        "generation",
        "properties",
        "queue_name",
        "result",
    )

    def __init__(
        self,
        queue_name: str,
        bodies: Sequence[bytes],
        action: Action | None,
        closing: bool,
        properties: pika.BasicProperties = _PERSISTENT,
    ) -> None:
        self.queue_name = queue_name
        self.properties = properties
        self.bodies = bodies
        self.action = action
        self.closing = closing
        self.result: AsyncResult[int] = AsyncResult()
        self.first_tag = 0  # delivery tag of its first body once written (tags start at 1)
        self.generation = 0  # the channel it was written on


def _end_wait() -> None:
    """Timer callback whose only job is to make ``process_data_events`` return."""


class Publisher:
    def __init__(self, settings: RabbitSettings) -> None:
        self._settings = settings
        self._requests: Queue[_Request] = Queue()
        self._owner: Greenlet[Any, None] | None = None
        self._log = queue_logger("rabbitmq")
        heartbeat_s = settings.heartbeat_s
        self._service_interval_s = min(1.0, heartbeat_s / 4) if heartbeat_s else 1.0
        # Owned by the owner greenlet only:
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._generation = 0
        self._declared: set[str] = set()
        self._next_tag = 1
        self._unconfirmed: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: set[str] = set()
        self._closed_by_broker: pika.exceptions.ChannelClosedByBroker | None = None

    # ----------------------------------------------------------------- callers' side
    def publish(
        self,
        queue_name: str,
        bodies: Sequence[bytes],
        properties: pika.BasicProperties = _PERSISTENT,
    ) -> None:
        if bodies:
            self._submit(_Request(queue_name, bodies, None, False, properties))

    def run(self, queue_name: str, action: Action) -> int:
        """``action(channel)``; a queue that does not exist counts as empty (returns 0)."""
        return self._submit(_Request(queue_name, (), action, False))

    def close(self) -> None:
        """Close the connection after the requests already queued. Never raises."""
        if self._owner is None or self._owner.dead:
            return
        try:
            self._submit(_Request("", (), None, True))
        except BrokerError:
            pass

    def _submit(self, request: _Request) -> int:
        self._requests.put(request)
        if self._owner is None or self._owner.dead:
            self._owner = gevent.spawn(self._serve)
        # The owner always answers; the bound only guards against it being killed from outside.
        settings = self._settings
        batches = 1 + len(request.bodies) // settings.confirm_batch_size
        bound_s = 3 * settings.connect_timeout_s + batches * settings.confirm_timeout_s + 30
        try:
            answer = request.result.get(timeout=bound_s)
        except gevent.Timeout:
            raise BrokerConnectionError(
                f"rabbitmq publisher did not answer within {bound_s:.0f} s"
            ) from None
        assert answer is not None
        return answer

    # ----------------------------------------------------------------- owner's side
    def _serve(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                request = self._requests.get(timeout=self._service_interval_s)
            except Empty:
                if time.monotonic() - idle_since < IDLE_CLOSE_S:
                    self._service_heartbeats()
                    continue
                # Unused for a long time: close, and end this greenlet so that it does not keep
                # a gevent.wait() waiting; the next call reconnects.
                request = _Request("", (), None, True)
            if request.closing:
                self._disconnect()
                request.result.set(0)
                if self._requests.empty():
                    self._owner = None
                    return
                continue
            self._handle(request)
            idle_since = time.monotonic()

    def _handle(self, request: _Request) -> None:
        try:
            if request.action is None:
                self._publish_batch([request, *self._more_publishes(len(request.bodies))])
            else:
                self._run_action(request)
        except Exception as exc:
            # A bug must not leave callers waiting forever, nor end the owner.
            self._log.exception("rabbitmq publisher hit an unexpected error")
            self._disconnect()
            if not request.result.ready():
                request.result.set_exception(BrokerError(f"unexpected error: {exc!r}"))

    def _more_publishes(self, queued_bodies: int) -> list[_Request]:
        """Publish requests already waiting, merged into the same confirm batch."""
        more: list[_Request] = []
        while queued_bodies < self._settings.confirm_batch_size and not self._requests.empty():
            nxt = self._requests.peek_nowait()
            if nxt.action is not None or nxt.closing:
                break
            more.append(self._requests.get_nowait())
            queued_bodies += len(nxt.bodies)
        return more

    def _service_heartbeats(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(time_limit=0)
        except PIKA_ERRORS as exc:
            self._log.warning(
                "publisher connection to {} lost while idle ({}); the next call reconnects",
                self._settings.masked_url,
                translate(exc, "heartbeat", self._settings.password),
            )
            self._disconnect()

    def _run_action(self, request: _Request) -> None:
        assert request.action is not None
        try:
            self._ensure_connected()
            request.result.set(request.action(self._channel))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _NOT_FOUND:
                self._fail([request], exc, f"call on queue {request.queue_name!r}")
                return
            request.result.set(0)
            self._reopen_channel()
        except PIKA_ERRORS as exc:
            self._fail([request], exc, f"call on queue {request.queue_name!r}")

    def _publish_batch(self, batch: list[_Request]) -> None:
        try:
            self._ensure_connected()
            declared = self._declare_each(batch)
            for request in declared:
                self._write(request)
            self._await_confirms()
        except _PUBLISH_ERRORS as exc:
            self._fail_partly(batch, exc)
            return
        for request in declared:
            self._answer(request)
        self._nacked.clear()
        self._returned.clear()

    def _fail_partly(self, batch: list[_Request], exc: BaseException) -> None:
        """Fail every unanswered request, each with the count of its leading confirmed bodies.

        After a refusal only the request whose message was refused gets ``MessageRefusedError``
        (sending it again cannot help); requests merged into the same batch only lost the
        channel with it and get a plain ``BrokerError``, which their callers retry.
        """
        doing = f"publish to queue {batch[0].queue_name!r}"
        refusal = self._closed_by_broker
        culprit_seen = False
        for request in batch:
            if request.result.ready():
                continue
            accepted = self._accepted_prefix(request)
            if accepted == len(request.bodies):
                request.result.set(accepted)  # all confirmed before the failure: a success
                continue
            error: BrokerError
            if refusal is not None:
                if culprit_seen:
                    error = BrokerError(
                        f"rabbitmq closed the channel while publishing to "
                        f"{request.queue_name!r} because of another request's message"
                    )
                else:
                    culprit_seen = True
                    error = MessageRefusedError(
                        f"rabbitmq refused a message for queue {request.queue_name!r} and "
                        "closed the channel: "
                        f"{refusal.reply_code} {refusal.reply_text}"
                    )
                    error.index = accepted
            elif isinstance(exc, BrokerError):
                error = type(exc)(str(exc))
            else:
                error = translate(exc, doing, self._settings.password)
            error.accepted = accepted
            request.result.set_exception(error)
        self._disconnect()

    def _accepted_prefix(self, request: _Request) -> int:
        """How many leading bodies of ``request`` RabbitMQ confirmed (acked) on this channel."""
        if not request.first_tag or request.generation != self._generation:
            return 0
        accepted = 0
        for tag in range(request.first_tag, request.first_tag + len(request.bodies)):
            if tag >= self._next_tag or tag in self._unconfirmed or tag in self._nacked:
                break
            accepted += 1
        return accepted

    def _declare_each(self, batch: list[_Request]) -> list[_Request]:
        """Declare each queue once per connection; a refused declare fails only its request."""
        ok: list[_Request] = []
        for request in batch:
            if request.queue_name not in self._declared:
                try:
                    declare(self._channel, self._settings, request.queue_name)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    request.result.set_exception(
                        translate(exc, f"declare of {request.queue_name!r}", "")
                    )
                    if not self._reopen_channel():
                        raise BrokerConnectionError(
                            "rabbitmq: could not reopen the publisher channel"
                        ) from exc
                    continue
                self._declared.add(request.queue_name)
            ok.append(request)
        return ok

    def _write(self, request: _Request) -> None:
        """Publish the request's bodies; it remembers its first delivery tag."""
        request.first_tag = self._next_tag
        request.generation = self._generation
        # The frames go through the channel's underlying async implementation: the blocking
        # channel's basic_publish drives the connection after EVERY message (about 3/4 of the
        # time of a batch), while here they are buffered and flushed by _await_confirms, which
        # must run the connection anyway. That is the second private-attribute use, with the
        # confirm mode in _open.
        publish = self._channel._impl.basic_publish
        properties = request.properties
        for body in request.bodies:
            if len(body) > CONFIRM_BEFORE_BYTES and self._unconfirmed:
                self._await_confirms()  # a refusal of this one must not leave others in doubt
            # Counted BEFORE the write, so that an ack read while sending is never missed.
            self._unconfirmed.add(self._next_tag)
            self._next_tag += 1
            # mandatory: a queue deleted since we declared it returns the message instead of
            # dropping it, and the caller's retry declares it again.
            publish("", request.queue_name, body, properties=properties, mandatory=True)
            if len(self._unconfirmed) >= self._settings.confirm_batch_size:
                self._await_confirms()

    def _await_confirms(self) -> None:
        assert self._connection is not None
        deadline = time.monotonic() + self._settings.confirm_timeout_s
        while self._unconfirmed:
            if self._closed_by_broker is not None:
                # The confirms still owed will never come: RabbitMQ dropped them with the channel.
                raise BrokerError(f"rabbitmq closed the channel: {self._closed_by_broker}")
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise BrokerConnectionError(
                    f"rabbitmq did not confirm {len(self._unconfirmed)} message(s) within "
                    f"{self._settings.confirm_timeout_s} s"
                )
            self._connection.process_data_events(time_limit=remaining_s)

    def _answer(self, request: _Request) -> None:
        first = request.first_tag
        end = first + len(request.bodies)
        nacked = sum(1 for tag in self._nacked if first <= tag < end)
        if request.queue_name in self._returned:
            self._declared.discard(request.queue_name)
            request.result.set_exception(
                BrokerError(f"rabbitmq returned messages for {request.queue_name!r}: no such queue")
            )
        elif nacked:
            # A nack (a full queue with overflow reject-publish, ...) may pass: retryable.
            error = BrokerError(
                f"rabbitmq refused (nacked) {nacked} message(s) for {request.queue_name!r}"
            )
            error.accepted = self._accepted_prefix(request)
            request.result.set_exception(error)
        else:
            request.result.set(end - first)

    def _fail(self, batch: list[_Request], exc: BaseException, doing: str) -> None:
        error = translate(exc, doing, self._settings.password)
        self._disconnect()
        for request in batch:
            if not request.result.ready():
                request.result.set_exception(error)

    # ----------------------------------------------------------------- connection
    def _ensure_connected(self) -> None:
        if self._connection is not None and self._connection.is_open:
            return
        self._disconnect()
        connection, channel = open_channel(self._settings, "geboost publisher")
        self._connection = connection
        self._setup_channel(channel)
        self._log.debug("publisher connected to {}", self._settings.masked_url)

    def _reopen_channel(self) -> bool:
        """After the broker closed our channel (refused declare, unknown queue)."""
        if self._connection is None or not self._connection.is_open:
            self._disconnect()
            return False
        try:
            self._setup_channel(self._connection.channel())
        except PIKA_ERRORS:
            self._disconnect()
            return False
        return True

    def _setup_channel(self, channel: Any) -> None:
        assert self._connection is not None
        self._generation += 1
        self._channel = channel
        self._declared.clear()
        self._next_tag = 1
        self._unconfirmed.clear()
        self._nacked.clear()
        self._returned.clear()
        self._closed_by_broker = None
        impl = channel._impl  # see the module docstring: confirms counted here, in batches
        selected: list[bool] = []

        def on_select_ok(_frame: Any) -> None:
            selected.append(True)
            self._wake()

        impl.confirm_delivery(
            ack_nack_callback=functools.partial(self._on_confirm, self._generation),
            callback=on_select_ok,
        )
        impl.add_on_return_callback(functools.partial(self._on_return, self._generation))
        impl.add_on_close_callback(functools.partial(self._on_channel_closed, self._generation))
        deadline = time.monotonic() + self._settings.confirm_timeout_s
        while not selected and time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=deadline - time.monotonic())
        if not selected:
            raise pika.exceptions.AMQPConnectionError("no answer to confirm.select")

    def _on_confirm(self, generation: int, frame: Any) -> None:
        if generation != self._generation:
            return  # a late frame of a channel we already replaced
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:
            settled = {t for t in self._unconfirmed if t <= tag}
        else:
            settled = {tag} & self._unconfirmed
        self._unconfirmed -= settled
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked |= settled
        if not self._unconfirmed:
            self._wake()

    def _on_return(self, generation: int, _channel: Any, method: Any, *_rest: Any) -> None:
        if generation == self._generation:
            self._returned.add(method.routing_key)

    def _on_channel_closed(self, generation: int, _channel: Any, reason: Exception) -> None:
        # Without this, a refused publish would only show as missing confirms, after
        # confirm_timeout_s.
        if generation == self._generation and isinstance(
            reason, pika.exceptions.ChannelClosedByBroker
        ):
            self._closed_by_broker = reason
            self._wake()

    def _wake(self) -> None:
        # pika's own advice for a callback on the connection's thread: call_later(0, ...) makes
        # the running process_data_events return as soon as this callback is done.
        if self._connection is not None:
            self._connection.call_later(0, _end_wait)

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._generation += 1
        self._closed_by_broker = None
        close_quietly(connection)

"""A RabbitMQ receiver: one connection, one channel, one consumer, used by one puller greenlet.

RabbitMQ pushes up to ``prefetch_count`` (by default the booster's window,
``ceil(1.25 * concurrent_num / conn_num)``) unacknowledged messages to the consumer; they wait in
a local buffer until ``fetch`` hands them out. Delivery tags only mean something on the channel
that delivered them, so every handle is ``(generation, tag)``: after a reconnect, handles of the
old channel are ignored (RabbitMQ requeued those messages when the channel died) instead of
being acked on the new channel, where the same number names another message or none at all
(an unknown tag would make RabbitMQ close the channel).

``requeue`` cancels the consumer before nacking, so that RabbitMQ gives the messages to a
receiver that is asking for work rather than straight back to this one; the next ``fetch``
consumes again.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pika

from geboost.brokers.base import Delivery
from geboost.brokers.rabbitmq_config import (
    PIKA_ERRORS,
    RabbitSettings,
    close_quietly,
    declare,
    open_channel,
    translate,
)
from geboost.errors import BrokerConnectionError, BrokerError
from geboost.log import queue_logger

__all__ = ["RabbitMQReceiver"]

Settle = Callable[[int, bool], None]


class RabbitMQReceiver:
    """See the module docstring. Connects on the first ``fetch`` or ``reconnect``."""

    def __init__(self, settings: RabbitSettings, queue_name: str, *, prefetch_count: int) -> None:
        self._settings = settings
        self._prefetch_count = prefetch_count
        self._queue = queue_name
        self._log = queue_logger(queue_name)
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._generation = 0
        self._consumer_tag: str | None = None
        self._buffer: deque[Delivery] = deque()
        self._unsettled: set[int] = set()  # delivered on this channel, not acked or requeued

    def __repr__(self) -> str:
        return f"RabbitMQReceiver(queue={self._queue!r}, url={self._settings.masked_url!r})"

    def fetch(self, max_count: int, timeout_s: float) -> list[Delivery]:
        try:
            if self._connection is None:
                self._connect()
            connection = self._connection
            assert connection is not None
            deadline = time.monotonic() + timeout_s  # counted once connected
            if self._consumer_tag is None:
                self._consume()
            self._check_consuming()
            while not self._buffer:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    return []
                connection.process_data_events(time_limit=remaining_s)
                self._check_consuming()
            if len(self._buffer) < max_count:
                connection.process_data_events(time_limit=0)  # what already arrived, too
        except PIKA_ERRORS as exc:
            raise self._broken(exc, "fetch") from None
        return [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        channel = self._channel
        if channel is not None:
            self._settle(deliveries, lambda tag, multiple: channel.basic_ack(tag, multiple), "ack")

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        channel = self._channel
        if channel is None:
            return
        if self._consumer_tag is not None and self._current_tags(deliveries):
            # Stop our consumer first: RabbitMQ would otherwise push the requeued messages
            # straight back to us (we just freed prefetch room) instead of to a receiver that
            # is asking for work. The next fetch consumes again.
            try:
                channel.basic_cancel(self._consumer_tag)
            except PIKA_ERRORS as exc:
                raise self._broken(exc, "requeue") from None
            self._consumer_tag = None
        self._settle(
            deliveries,
            lambda tag, multiple: channel.basic_nack(tag, multiple, requeue=True),
            "requeue",
        )

    def keepalive(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(time_limit=0)
            self._check_consuming()
        except PIKA_ERRORS as exc:
            raise self._broken(exc, "heartbeat") from None

    def reconnect(self) -> None:
        self._drop()
        try:
            self._connect()
        except PIKA_ERRORS as exc:
            raise self._broken(exc, "connect") from None

    def close(self) -> None:
        # Closing the channel makes RabbitMQ requeue everything it still holds: the buffer and
        # the calls that never finished.
        try:
            self._drop()
        except Exception as exc:  # close never raises
            self._log.warning("closing the receiver: {}", exc)

    # ----------------------------------------------------------------- internals
    def _connect(self) -> None:
        connection, channel = open_channel(self._settings, f"geboost receiver {self._queue}")
        try:
            declare(channel, self._settings, self._queue)
            channel.basic_qos(prefetch_count=self._prefetch_count)
        except BaseException:
            close_quietly(connection)
            raise
        self._generation += 1
        self._connection, self._channel = connection, channel
        self._consume()
        self._log.debug("receiver connected to {}", self._settings.masked_url)

    def _consume(self) -> None:
        self._consumer_tag = self._channel.basic_consume(
            self._queue,
            functools.partial(self._on_message, self._generation),
            auto_ack=False,
        )

    def _on_message(
        self, generation: int, _channel: Any, method: Any, _properties: Any, body: bytes
    ) -> None:
        if generation != self._generation:
            return  # cannot happen once the old connection is closed; cheap to be sure
        tag = method.delivery_tag
        self._unsettled.add(tag)
        self._buffer.append(Delivery(body, (generation, tag)))

    def _current_tags(self, deliveries: Sequence[Delivery]) -> set[int]:
        """Tags of ``deliveries`` this channel can still settle (not stale, not settled)."""
        return {
            tag
            for generation, tag in (d.handle for d in deliveries)
            if generation == self._generation and tag in self._unsettled
        }

    def _check_consuming(self) -> None:
        if self._consumer_tag is not None and self._consumer_tag not in self._channel.consumer_tags:
            # RabbitMQ cancels a consumer whose queue was deleted: reconnecting declares it again.
            raise self._broken(BrokerConnectionError("consumer cancelled by RabbitMQ"), "fetch")

    def _settle(self, deliveries: Sequence[Delivery], send: Settle, doing: str) -> None:
        """Ack or requeue: ``multiple=True`` for the run of oldest tags, then one by one.

        ``multiple=True`` settles EVERY unsettled tag up to the one given, so it is only used
        for the longest prefix of this channel's unsettled tags that the batch covers entirely;
        tags still running or still buffered stop the prefix.
        """
        tags = self._current_tags(deliveries)
        if not tags:
            return
        prefix: list[int] = []
        for tag in sorted(self._unsettled):
            if tag not in tags:
                break
            prefix.append(tag)
        singles = sorted(tags.difference(prefix))
        try:
            if len(prefix) > 1:
                send(prefix[-1], True)
            else:
                singles = sorted(tags)
            for tag in singles:
                send(tag, False)
        except PIKA_ERRORS as exc:
            raise self._broken(exc, doing) from None
        self._unsettled -= tags

    def _broken(self, exc: BaseException, doing: str) -> BrokerError:
        error = translate(exc, f"{doing} on queue {self._queue!r}", self._settings.password)
        if isinstance(exc, BrokerError):
            error = type(exc)(f"rabbitmq {doing} on queue {self._queue!r}: {exc}")
        self._drop()
        return error

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._consumer_tag = None
        self._buffer.clear()
        self._unsettled.clear()
        close_quietly(connection)

"""``BrokerKind.RABBITMQ``: RabbitMQ through pika, at-least-once.

Topology: no exchange of our own. Each queue is a durable queue published to through the
default exchange (routing key = queue name), declared on first use (publish, receive, count,
purge) with the same arguments. Messages are persistent (delivery_mode 2) and
``publish`` returns only once RabbitMQ confirmed every one of them (publisher confirms, counted
per batch). Dead letters go to ``<queue>.dlq``, just another durable queue the engine publishes
to; the configured ``queue_arguments`` do not apply to it (only ``x-queue-type`` does).

The broker's own connection (publish, count, purge) is driven by one owner greenlet that also
services its heartbeats; it is closed after 60 s without calls and reopened on the next one.

Consumption: each receiver (one per puller greenlet) has its own connection and channel, a
``basic_qos(prefetch_count)`` window and a manual-ack consumer. Unacked messages of a channel
that closes (worker killed, network lost) are redelivered by RabbitMQ; handles of a closed
channel are ignored afterwards, never acked on the new one.

URL (``BrokerConfig.broker_url``):
    ``""``                                  localhost:5672, guest/guest, vhost ``/``
    ``"host:port"`` or ``"host"``           guest/guest, vhost ``/``
    ``"amqp://user:pass@host:port/vhost"``  (vhost URL-encoded: ``%2F`` is ``/``)
    ``"amqps://user:pass@host:port/vhost"`` TLS, port 5671 by default
The password is never logged nor shown in a repr (``***``). A query string is refused: settings
go in the transport options.

Transport options (``BrokerConfig.broker_transport_options``; an unknown key is an error):
    ``prefetch_count`` (int, default ``ceil(1.25 * concurrent_num / conn_num)``): unacked messages
        RabbitMQ pushes to ONE receiver (connection). The default keeps the booster's pool full
        without leaving messages prefetched for long (RabbitMQ's ``consumer_timeout`` also
        counts those); set it to override.
    ``heartbeat_s`` (int, 60): AMQP heartbeat proposed to the broker; 0 turns it off.
    ``queue_arguments`` (dict, {}): ``x-`` arguments for declaring the work queue, e.g.
        ``{"x-max-priority": 10}``, ``{"x-message-ttl": 60000}``, ``{"x-queue-type": "quorum"}``.
        Every worker and producer of a queue must use the same ones (RabbitMQ refuses a declare
        with different arguments: PRECONDITION_FAILED, raised as ``BrokerError``).
    ``connect_timeout_s`` (float, 10): socket timeout; the whole AMQP handshake gets twice it.
    ``blocked_connection_timeout_s`` (float, 60): a connection blocked by a broker resource
        alarm this long is dropped (the push fails and is retried) instead of hanging.
    ``confirm_timeout_s`` (float, 30): longest wait for the publisher confirms of one batch.
    ``confirm_batch_size`` (int, 1000): messages written before waiting for their confirms.
    ``max_message_size`` (int, 134217728): largest body in bytes, RabbitMQ's own default for its
        ``max_message_size`` setting; a larger one is refused (``MessageRefusedError``) before
        anything of its batch is sent. Set it to the server's value; 0 turns the check off.
    ``tls_ca_file`` (str, ""): CA bundle for ``amqps://``; empty = the system's.
    ``tls_verify`` (bool, True): False skips certificate checks (test brokers only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pika

from geboost.brokers.base import BrokerConfig, is_dead_letter_queue
from geboost.brokers.rabbitmq_config import RabbitSettings, declare, delay_queue_name
from geboost.brokers.rabbitmq_publisher import Publisher
from geboost.brokers.rabbitmq_receiver import RabbitMQReceiver
from geboost.errors import MessageRefusedError

__all__ = ["RabbitMQBroker", "RabbitMQReceiver", "delay_step_ms"]

_MIN_DELAY_STEP_MS = 10  # shorter delays go straight to the queue; the engine holds them
_MAX_DELAY_STEP_MS = 4_000_000_000  # x-message-ttl is at most 2**32 - 1 ms


def delay_step_ms(delay_ms: int) -> int:
    """The delay queue's TTL for a message due in ``delay_ms``: its first significant digit
    (5370 -> 5000, 999 -> 900), so at most 9 delay queues per power of ten are ever used; 0 for
    delays under 10 ms. The rest of the delay is waited out by the consumer (a message due
    within a second is held by the engine; farther, it takes another, smaller step)."""
    if delay_ms < _MIN_DELAY_STEP_MS:
        return 0
    delay_ms = min(delay_ms, _MAX_DELAY_STEP_MS)
    magnitude = int(10 ** (len(str(delay_ms)) - 1))
    return (delay_ms // magnitude) * magnitude


class RabbitMQBroker:
    """Built without connecting; ``ConfigurationError`` for a bad URL or transport option.

    Its own connection (publish, count, purge) belongs to one owner greenlet, see
    ``rabbitmq_publisher``; every receiver opens its own.
    """

    def __init__(self, config: BrokerConfig) -> None:
        self._settings = RabbitSettings.from_config(
            config.broker_url, config.broker_transport_options
        )
        self._settings.connection_parameters("validation only")  # pika checks, no connection
        self._publisher = Publisher(self._settings)
        self._delay_targets: set[str] = set()  # work queues declared before a delayed publish

    def __repr__(self) -> str:
        return f"RabbitMQBroker(url={self._settings.masked_url!r})"

    @property
    def settings(self) -> RabbitSettings:
        return self._settings

    def publish(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        self._check_sizes(queue_name, bodies)
        self._publisher.publish(queue_name, bodies)

    def publish_timed(
        self, queue_name: str, bodies: Sequence[bytes], *, delay_s: float, priority: int
    ) -> None:
        """Priority as the message's AMQP priority; a delay through a delay queue (one per
        step, see the module docstring), confirmed like any publish."""
        self._check_sizes(queue_name, bodies)
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, priority=priority or None
        )
        step_ms = delay_step_ms(int(delay_s * 1000))
        target = queue_name
        if step_ms:
            target = delay_queue_name(queue_name, step_ms)
            if queue_name not in self._delay_targets:
                # RabbitMQ drops a message dead-lettered to a queue that does not exist, so the
                # work queue must exist before anything can leave a delay queue for it.
                self.count(queue_name)  # declares it
                self._delay_targets.add(queue_name)
        self._publisher.publish(target, bodies, properties)

    def delay_queue_names(self, queue_name: str, delays_s: Sequence[float]) -> list[str]:
        """The delay queues that pushes with these delays use (tests and tooling)."""
        steps = {delay_step_ms(int(d * 1000)) for d in delays_s}
        names: list[str] = []
        for step in sorted(steps - {0}):
            names.append(delay_queue_name(queue_name, step))
            # What is left after a step (< step) may take one more, smaller step.
            rest = step - 1
            while (rest_step := delay_step_ms(rest)) > 0:
                names.append(delay_queue_name(queue_name, rest_step))
                rest = rest_step - 1
        return sorted(set(names))

    def _check_sizes(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        limit = self._settings.max_message_size
        if limit:
            # RabbitMQ would close the channel on such a body, after the ones before it went in;
            # checked before anything of the batch is sent, so a refused batch sends nothing.
            for index, body in enumerate(bodies):
                if len(body) > limit:
                    error = MessageRefusedError(
                        f"a body of {len(body)} bytes for queue {queue_name!r} is over "
                        f"RabbitMQ's max_message_size of {limit} bytes "
                        "(transport option 'max_message_size')"
                    )
                    error.index = index
                    raise error

    def open_receiver(self, queue_name: str, *, window: int = 100) -> RabbitMQReceiver:
        prefetch = self._settings.prefetch_count or min(max(window, 1), 65535)
        if is_dead_letter_queue(queue_name):
            # Dead letters are read by dead_letters()/requeue_dead_letters(), which hold what
            # they read until the end: a prefetch_count set for pullers would stop them short.
            prefetch = min(max(window, 1), 65535)
        return RabbitMQReceiver(self._settings, queue_name, prefetch_count=prefetch)

    def delayed_count(self, queue_name: str) -> int | None:
        # The delay queues' names depend on the delays pushed; AMQP cannot list them.
        return None

    def count(self, queue_name: str) -> int:
        # A real declare, not a passive one: asking about a queue that does not exist yet
        # (a dead-letter queue before the first failure) must not close the channel, and the
        # queue is one the booster will use anyway.
        def ready(channel: Any) -> int:
            return declare(channel, self._settings, queue_name)

        return self._publisher.run(queue_name, ready)

    def in_flight(self, queue_name: str) -> int | None:
        # AMQP does not tell (only the management plugin's HTTP API does).
        return None

    def purge(self, queue_name: str) -> int:
        def purge(channel: Any) -> int:
            declare(channel, self._settings, queue_name)
            return int(channel.queue_purge(queue_name).method.message_count)

        return self._publisher.run(queue_name, purge)

    def delete_queue(self, queue_name: str) -> None:
        """Delete the queue and its messages (tests and tooling; the engine never calls it)."""

        def delete(channel: Any) -> int:
            return int(channel.queue_delete(queue_name).method.message_count)

        self._publisher.run(queue_name, delete)

    def close(self) -> None:
        self._publisher.close()

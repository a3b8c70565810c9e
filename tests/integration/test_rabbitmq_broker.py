"""The RabbitMQ broker on the protocol directly, against the shared RabbitMQ on 127.0.0.1:5672.

Every test uses its own queues and deletes them after; the server itself is never touched.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from loguru import logger

from geboost import (
    Booster,
    BoostOptions,
    BrokerAuthenticationError,
    BrokerConfig,
    BrokerConnectionError,
    BrokerError,
    BrokerKind,
    ConfigurationError,
    MessageRefusedError,
    PublishError,
    new_booster,
)
from geboost.brokers.base import get_broker_factory
from geboost.brokers.rabbitmq import RabbitMQBroker
from geboost.brokers.rabbitmq_config import RabbitSettings
from geboost.message import DeadLetter, decode_task, encode, make_task
from tests.support import (
    cleanup_queues,
    drain,
    free_port,
    port_open,
    skip_or_fail,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.rabbitmq

URL = "127.0.0.1:5672"


@pytest.fixture
def rabbit() -> None:
    if not port_open("127.0.0.1", 5672):
        skip_or_fail("no RabbitMQ server answers on 127.0.0.1:5672")


@pytest.fixture
def qname(rabbit: None) -> Iterator[str]:
    name = unique_name("test-rmq")
    yield name
    cleaner = RabbitMQBroker(BrokerConfig(broker_url=URL))
    cleanup_queues(cleaner, name)
    cleaner.close()


def make(**options: Any) -> RabbitMQBroker:
    return RabbitMQBroker(BrokerConfig(broker_url=URL, broker_transport_options=options))


@pytest.fixture
def broker(qname: str) -> Iterator[RabbitMQBroker]:
    b = make()
    yield b
    b.close()


def bodies(n: int, tag: str = "m") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


def wait_count(b: RabbitMQBroker, q: str, n: int, timeout_s: float = 5.0) -> bool:
    return wait_for(lambda: b.count(q) == n, timeout_s)


# ---------------------------------------------------------------- configuration (no server)
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", ("amqp", "localhost", 5672, "/", "guest", "guest")),
        ("rabbit.example:5673", ("amqp", "rabbit.example", 5673, "/", "guest", "guest")),
        ("rabbit.example", ("amqp", "rabbit.example", 5672, "/", "guest", "guest")),
        ("amqp://u:p%40ss@h:1234/v%2Fh", ("amqp", "h", 1234, "v/h", "u", "p@ss")),
        ("amqp://u:pw@h/%2F", ("amqp", "h", 5672, "/", "u", "pw")),
        ("amqps://u:pw@h", ("amqps", "h", 5671, "/", "u", "pw")),
        ("amqp://[::1]:5672/", ("amqp", "::1", 5672, "/", "guest", "guest")),
    ],
)
def test_url_forms(url: str, expected: tuple[Any, ...]) -> None:
    s = RabbitSettings.from_config(url, {})
    assert (s.scheme, s.host, s.port, s.vhost, s.username, s.password) == expected
    params = s.connection_parameters("t")
    assert (params.host, params.port, params.virtual_host) == expected[1:4]
    assert (params.ssl_options is not None) == (expected[0] == "amqps")


@pytest.mark.parametrize("url", ["redis://h:1", "amqp://h:notaport", "amqp://h/?heartbeat=5"])
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RabbitMQBroker(BrokerConfig(broker_url=url))


def test_transport_options_are_checked_and_named() -> None:
    with pytest.raises(ConfigurationError, match="prefetch_cnt"):
        make(prefetch_cnt=10)
    with pytest.raises(ConfigurationError, match="heartbeat_s"):
        make(heartbeat_s="30")
    with pytest.raises(ConfigurationError, match="prefetch_count"):
        make(prefetch_count=0)
    with pytest.raises(ConfigurationError, match="confirm_timeout_s"):
        make(confirm_timeout_s=-1)
    with pytest.raises(ConfigurationError, match="tls_ca_file"):
        make(tls_ca_file="/nonexistent.pem")  # amqp://, not amqps://
    b = make(prefetch_count=7, heartbeat_s=5, queue_arguments={"x-max-priority": 3})
    assert b.settings.prefetch_count == 7 and b.settings.heartbeat_s == 5


def test_registry_builds_it_without_connecting() -> None:
    factory = get_broker_factory("rabbitmq")
    b = factory(BrokerConfig(broker_url=f"127.0.0.1:{free_port()}"))
    assert isinstance(b, RabbitMQBroker)
    b.close()


def test_password_is_never_shown(rabbit: None) -> None:
    secret = "s3cr3t-pw-" + uuid.uuid4().hex[:6]
    url = f"amqp://guest:{secret}@127.0.0.1:5672/"
    records: list[str] = []
    sink = logger.add(lambda m: records.append(str(m)), level="DEBUG")
    try:
        b = RabbitMQBroker(BrokerConfig(broker_url=url))
        r = b.open_receiver(unique_name("never-created"))
        shown = [repr(b), repr(r), repr(b.settings), b.settings.masked_url]
        with pytest.raises(BrokerAuthenticationError) as publish_error:
            b.publish(unique_name("never-created"), [b"x"])  # wrong password: refused by the server
        with pytest.raises(BrokerAuthenticationError) as fetch_error:
            r.fetch(1, 0.1)
        shown += [str(publish_error.value), str(fetch_error.value)]
        r.close()
        b.close()
    finally:
        logger.remove(sink)
    assert "***" in shown[0]
    for text in shown + records:
        assert secret not in text


# ---------------------------------------------------------------- the protocol
def test_publish_count_fetch_ack(broker: RabbitMQBroker, qname: str) -> None:
    broker.publish(qname, bodies(10))
    assert broker.count(qname) == 10  # confirmed means already counted
    r = broker.open_receiver(qname)
    try:
        got = drain(r, 10)
        assert [d.body for d in got] == bodies(10)
        assert broker.in_flight(qname) is None
        r.ack(got)
        assert list(r.fetch(5, 0.2)) == []
    finally:
        r.close()
    assert broker.count(qname) == 0


def test_default_prefetch_is_the_engine_window(broker: RabbitMQBroker, qname: str) -> None:
    # With a window of 2, the first receiver is pushed at most 2 messages: the rest stay
    # available to another receiver instead of being hoarded in the first one's buffer.
    broker.publish(qname, bodies(6))
    a, b = broker.open_receiver(qname, window=2), broker.open_receiver(qname, window=2)
    try:
        first = drain(a, 1)
        a.keepalive()
        assert wait_count(broker, qname, 4)  # 1 handed out + 1 prefetched; 4 still waiting
        second = drain(b, 2)
        b.ack(second)
        third = drain(b, 2)  # b's window holds 2 at a time
        # a never took more than its window: b got all 4 others, and none is left waiting.
        assert len(first) == 1 and len(second) == 2 and len(third) == 2
        assert broker.count(qname) == 0
        a.ack(first)
        b.ack(third)
    finally:
        a.close()
        b.close()


def test_out_of_order_acks_never_settle_messages_still_held(
    broker: RabbitMQBroker, qname: str
) -> None:
    broker.publish(qname, bodies(10))
    r = broker.open_receiver(qname)
    try:
        got = drain(r, 6)  # with prefetch, the other 4 sit in the receiver's buffer
        assert len(got) == 6
        r.ack([got[1], got[3]])  # not a prefix: one by one
        r.ack([got[0], got[2], got[4]])  # a prefix (0..4): multiple=True up to 4
        r.ack([got[3]])  # already acked: ignored, must not close the channel
        r.ack([got[5]])
        r.keepalive()
    finally:
        r.close()  # the 4 buffered ones go back
    assert wait_count(broker, qname, 4)
    r2 = broker.open_receiver(qname)
    try:
        rest = drain(r2, 4)
        assert [d.body for d in rest] == bodies(10)[6:]
        r2.ack(rest)
    finally:
        r2.close()
    assert broker.count(qname) == 0


def test_requeue_goes_to_the_receiver_that_asks(broker: RabbitMQBroker, qname: str) -> None:
    broker.publish(qname, bodies(3))
    a, b = broker.open_receiver(qname), broker.open_receiver(qname)
    try:
        held = drain(a, 3)
        assert list(b.fetch(3, 0.2)) == []
        a.requeue(held[:2])
        again = drain(b, 2)
        assert sorted(d.body for d in again) == bodies(3)[:2]
        b.ack(again)
        a.ack(held[2:])  # a still settles what it kept
        more = drain(a, 1, timeout_s=0.5)  # a consumes again: nothing is left
        assert more == []
    finally:
        a.close()
        b.close()
    assert broker.count(qname) == 0


def test_stale_tags_after_reconnect_are_ignored(broker: RabbitMQBroker, qname: str) -> None:
    broker.publish(qname, bodies(3))
    r = broker.open_receiver(qname)
    try:
        old = drain(r, 3)
        r.reconnect()  # the old channel's messages are requeued by RabbitMQ
        again = drain(r, 3)
        assert sorted(d.body for d in again) == bodies(3)
        # Tags restart at 1 on the new channel: acking the old handles must not ack the new
        # messages (same numbers) nor close the channel.
        r.ack(old)
        r.requeue(old)
        r.keepalive()
        assert wait_count(broker, qname, 0)
        r.close()
        r2 = broker.open_receiver(qname)
        back = drain(r2, 3)
        assert sorted(d.body for d in back) == bodies(3)  # none were settled by the stale acks
        r2.ack(back)
        r2.close()
    finally:
        r.close()
    assert broker.count(qname) == 0


def test_close_requeues_and_never_raises(broker: RabbitMQBroker, qname: str) -> None:
    broker.publish(qname, bodies(2))
    r = broker.open_receiver(qname)
    got = drain(r, 2)
    r.ack(got[:1])
    r.close()
    r.close()
    assert wait_count(broker, qname, 1)
    r.ack(got[1:])  # after close: ignored
    never_opened = broker.open_receiver(qname)
    never_opened.close()
    never_opened.keepalive()


def test_purge_and_queues_not_yet_used(broker: RabbitMQBroker, qname: str) -> None:
    dlq = qname + ".dlq"
    assert broker.count(dlq) == 0  # declared, not an error (a DLQ before the first failure)
    assert broker.purge(dlq) == 0
    broker.delete_queue(dlq)
    broker.delete_queue(dlq)  # already gone: a 404, answered as 0, channel reopened
    broker.publish(qname, bodies(4))
    assert broker.purge(qname) == 4
    assert broker.count(qname) == 0


def test_batches_and_concurrent_publishers(qname: str) -> None:
    b = make(confirm_batch_size=300)
    try:
        b.publish(qname, bodies(2500, "batch"))
        greenlets = [gevent.spawn(b.publish, qname, [f"g{i}".encode()]) for i in range(200)]
        gevent.joinall(greenlets, raise_error=True)
        assert b.count(qname) == 2700
    finally:
        b.close()


def test_publish_after_the_queue_was_deleted_fails_then_recovers(
    broker: RabbitMQBroker, qname: str
) -> None:
    broker.publish(qname, bodies(1))
    other = make()
    other.delete_queue(qname)
    other.close()
    with pytest.raises(BrokerError, match="returned"):
        broker.publish(qname, bodies(1))  # mandatory: not silently dropped
    broker.publish(qname, bodies(1))  # declared again
    assert broker.count(qname) == 1


def test_consumer_cancelled_by_queue_deletion_reconnects(
    broker: RabbitMQBroker, qname: str
) -> None:
    broker.publish(qname, bodies(1))
    r = broker.open_receiver(qname)
    try:
        r.ack(drain(r, 1))
        broker.delete_queue(qname)
        with pytest.raises(BrokerConnectionError):
            for _ in range(20):
                r.fetch(1, 0.1)
        r.reconnect()
        broker.publish(qname, bodies(1, "after"))
        got = drain(r, 1)
        assert [d.body for d in got] == [b"after0"]
        r.ack(got)
    finally:
        r.close()


def test_queue_arguments_apply_to_the_work_queue_not_the_dlq(qname: str) -> None:
    b = make(queue_arguments={"x-message-ttl": 1})
    try:
        b.publish(qname + ".dlq", bodies(2))
        b.publish(qname, bodies(3))
        assert wait_count(b, qname, 0)  # expired after 1 ms
        # The dead letters are older than the work messages that expired: they keep.
        assert b.count(qname + ".dlq") == 2
        plain = make()
        with pytest.raises(BrokerError, match="x-message-ttl"):
            plain.publish(qname, bodies(1))  # RabbitMQ refuses different arguments
        r = plain.open_receiver(qname)
        with pytest.raises(BrokerError, match="x-message-ttl"):
            r.fetch(1, 0.1)
        r.close()
        b.publish(qname + ".dlq", bodies(1))  # the refused declare did not break b
        plain.close()
    finally:
        b.close()


def test_unreachable_broker_fails_fast_and_recovers(qname: str) -> None:
    b = RabbitMQBroker(BrokerConfig(broker_url=f"127.0.0.1:{free_port()}"))
    with pytest.raises(BrokerConnectionError):
        b.publish(qname, [b"x"])
    with pytest.raises(BrokerConnectionError):
        b.count(qname)
    r = b.open_receiver(qname)
    with pytest.raises(BrokerConnectionError):
        r.fetch(1, 0.1)
    with pytest.raises(BrokerConnectionError):
        r.reconnect()
    r.close()
    b.close()


def test_heartbeats_keep_idle_connections_alive(qname: str) -> None:
    b = make(heartbeat_s=1)
    try:
        b.publish(qname, bodies(2))
        r = b.open_receiver(qname)
        got = drain(r, 1)
        deadline = time.monotonic() + 4  # > 2 heartbeat intervals
        while time.monotonic() < deadline:
            gevent.sleep(0.2)
            r.keepalive()
        r.ack(got)
        more = drain(r, 1)
        r.ack(more)
        r.close()
        b.publish(qname, bodies(1))  # the publisher's owner serviced its heartbeats too
        assert b.count(qname) == 1
    finally:
        b.close()


def test_a_receiver_that_is_not_serviced_loses_its_connection(qname: str) -> None:
    b = make(heartbeat_s=1)
    try:
        b.publish(qname, bodies(1))
        r = b.open_receiver(qname)
        drain(r, 1)
        time.sleep(5)  # patched: other greenlets run, this connection is not serviced
        with pytest.raises(BrokerConnectionError):
            for _ in range(30):
                r.keepalive()
                gevent.sleep(0.1)
        r.reconnect()
        again = drain(r, 1)
        assert [d.body for d in again] == bodies(1)
        r.ack(again)
        r.close()
    finally:
        b.close()


def test_confirms_that_arrive_during_the_write_are_counted(qname: str) -> None:
    # RabbitMQ may confirm a message while basic_publish is still driving the connection:
    # such an early ack must count (a missed one made publish wait out the confirm timeout).
    # Fresh connections, small batches and a consumer make early acks likely.
    for round_ in range(40):
        b = make(confirm_timeout_s=3)
        r = b.open_receiver(qname)
        try:
            b.publish(qname, bodies(5, f"r{round_}-"))
            got = drain(r, 5)
            r.ack(got)
            b.publish(qname, bodies(2, f"s{round_}-"))
            r.ack(drain(r, 2))
            assert len(got) == 5
        finally:
            r.close()
            b.close()
    assert make().count(qname) == 0


def test_an_unused_publisher_connection_is_closed_then_reopened(
    qname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geboost.brokers import rabbitmq_publisher

    monkeypatch.setattr(rabbitmq_publisher, "IDLE_CLOSE_S", 0.3)
    b = make()
    try:
        b.publish(qname, bodies(1))
        # no greenlet left behind to keep gevent.wait() waiting
        assert wait_for(lambda: b._publisher._owner is None, 5)
        b.publish(qname, bodies(1))
        assert b.count(qname) == 2
    finally:
        b.close()


# ---------------------------------------------------------------- refusals through a booster
def _booster(qname: str, *, url: str = URL, **kw: Any) -> Booster[..., Any]:
    transport = kw.pop("transport", {})
    return new_booster(
        BoostOptions(
            queue_name=qname,
            consume_func=_takes_text,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(broker_url=url, broker_transport_options=transport),
            handle_signals=False,
            **kw,
        )
    )


def _takes_text(text: str) -> None:
    del text


def test_a_message_the_server_refuses_fails_at_once_and_accepted_is_exact(qname: str) -> None:
    # max_message_size=0 switches the client-side check off, so that the body reaches RabbitMQ
    # (its default limit is 128 MiB), which closes the channel. The 20 items before it in its
    # chunk are in the queue and counted; a retry of the rest must not send them again.
    big = "x" * (134_217_728 + 1024)
    items = [(f"item{i}",) for i in range(250)]
    items[220] = (big,)
    b = _booster(
        qname,
        transport={"max_message_size": 0, "confirm_timeout_s": 20},
        push_retries=1,
        push_retry_interval_s=1,
    )
    try:
        with pytest.raises(PublishError) as caught:
            b.push_many(items, chunk_size=100)
        # Noticed from the channel's close, with its reason: not as a confirm missing after 20 s.
        assert "406" in str(caught.value) and "item 220" in str(caught.value)
        assert "did not confirm" not in str(caught.value)
        assert isinstance(caught.value.__cause__, MessageRefusedError)
        assert caught.value.accepted == 220
        assert wait_count(b.broker, qname, 220)  # type: ignore[arg-type]
        # The caller resumes after the refused item: nothing is in the queue twice.
        b.push_many(items[221:], chunk_size=100)
        assert wait_count(b.broker, qname, 249)  # type: ignore[arg-type]
    finally:
        b.stop(timeout_s=5)
    reader = make()
    r = reader.open_receiver(qname, window=300)
    got = drain(r, 249)
    r.ack(got)
    r.close()
    reader.close()
    names = sorted(decode_task(d.body).args[0] for d in got)
    assert names == sorted(f"item{i}" for i in range(250) if i != 220)


def test_a_refusal_fails_only_the_push_that_sent_the_refused_message(qname: str) -> None:
    # Pushes from other greenlets share the publisher's confirm batch (and so the channel that
    # RabbitMQ closes): they succeed, at once or after a retry, each exactly once.
    b = _booster(qname, transport={"max_message_size": 0}, push_retry_interval_s=0.1)
    try:
        big = gevent.spawn(b.push, "x" * (134_217_728 + 1024))
        small = [gevent.spawn(b.push, f"small{i}") for i in range(20)]
        gevent.joinall([big, *small], timeout=60)
        assert isinstance(big.exception, PublishError)
        assert isinstance(big.exception.__cause__, MessageRefusedError)
        assert [g.exception for g in small] == [None] * 20
        assert wait_count(b.broker, qname, 20)  # type: ignore[arg-type]
    finally:
        b.stop(timeout_s=5)


def test_an_item_over_max_message_size_is_refused_before_its_chunk_is_sent(
    qname: str, log_lines: list[str]
) -> None:
    b = _booster(qname, transport={"max_message_size": 1000}, push_retries=3)
    items = [(f"i{i}",) for i in range(10)]
    items[7] = ("y" * 2000,)
    try:
        with pytest.raises(PublishError) as caught:
            b.push_many(items, chunk_size=5)
        text = str(caught.value)
        assert "item 7" in text and "max_message_size of 1000 bytes" in text
        size = re.search(r"item 7 refused: a body of (\d+) bytes", text)
        assert size is not None and 2000 < int(size.group(1)) < 2200  # its encoded envelope
        assert caught.value.accepted == 5  # the first chunk; nothing of the second
        assert b.message_count() == 5
        assert not [line for line in log_lines if "retrying" in line]  # refused, not retried
    finally:
        b.stop(timeout_s=5)


def test_a_retry_sends_only_what_was_not_confirmed(qname: str, log_lines: list[str]) -> None:
    # A full queue (reject-publish) nacks the messages after its 5th: a retryable refusal.
    # Once the first attempt failed, the queue is emptied; the retry must send items 5..7 only.
    b = _booster(
        qname,
        transport={"queue_arguments": {"x-max-length": 5, "x-overflow": "reject-publish"}},
        push_retries=1,
        push_retry_interval_s=1,
    )
    try:
        pushing = gevent.spawn(b.push_many, [(f"i{i}",) for i in range(8)])
        assert wait_for(lambda: any("attempt 1/2" in line for line in log_lines), 10)
        assert b.purge() == 5
        pushing.get(timeout=30)
        assert wait_count(b.broker, qname, 3)  # type: ignore[arg-type]
        r = b.broker.open_receiver(qname)  # the same queue arguments
        got = drain(r, 3)
        r.ack(got)
        r.close()
        assert sorted(decode_task(d.body).args[0] for d in got) == ["i5", "i6", "i7"]
    finally:
        b.stop(timeout_s=5)


def test_wrong_credentials_fail_a_push_at_once_naming_authentication(
    qname: str, log_lines: list[str]
) -> None:
    b = _booster(qname, url="amqp://guest:wrong@127.0.0.1:5672/", push_retries=3)
    try:
        with pytest.raises(PublishError, match="authentication") as caught:
            b.push("x")
        assert isinstance(caught.value.__cause__, BrokerAuthenticationError)
        assert not [line for line in log_lines if "retrying" in line]
    finally:
        b.stop(timeout_s=5)


def test_a_consumer_with_wrong_credentials_keeps_trying(qname: str, log_lines: list[str]) -> None:
    b = _booster(qname, url="amqp://guest:wrong@127.0.0.1:5672/", reconnect_interval_s=0.2)
    try:
        b.consume()

        def refused() -> list[str]:
            return [x for x in log_lines if "ERROR" in x and "authentication" in x]

        assert wait_for(lambda: len(refused()) >= 3, 20)  # one error per attempt
        assert not b.join(timeout_s=0)  # still running: it never gives up
    finally:
        b.stop(timeout_s=5)


def test_dead_letter_reads_are_not_limited_by_a_configured_prefetch(qname: str) -> None:
    b = _booster(qname, transport={"prefetch_count": 5})
    try:
        letters = [
            encode(
                DeadLetter(
                    queue_name=qname,
                    body=encode(make_task((f"s{i}",), {})).decode(),
                    error="boom",
                    attempts=1,
                    failed_at=time.time(),
                )
            )
            for i in range(12)
        ]
        b.broker.publish(b.dead_letter_queue_name, letters)
        assert wait_for(lambda: b.dead_letter_count() == 12, 10)
        assert len(b.dead_letters()) == 12
        assert b.requeue_dead_letters() == 12
    finally:
        b.stop(timeout_s=5)

"""The Redis broker on the protocol directly, against the shared server on 6379 (unique queue
names per test) and, for passwords, unix sockets and TLS, against private servers it starts.

Skipped when Redis is absent on a developer's machine, failed when ``CI`` is set."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import redis
from loguru import logger
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection

from geboost import (
    BoostOptions,
    BrokerAuthenticationError,
    BrokerConfig,
    BrokerConnectionError,
    BrokerError,
    BrokerKind,
    ConfigurationError,
    PublishError,
    new_booster,
)
from geboost.brokers.base import Delivery
from geboost.brokers.redis import RedisBroker, held_key, leases_key
from geboost.brokers.redis_scripts import SOURCES
from tests.support import (
    REDIS_SERVER,
    free_port,
    port_open,
    skip_or_fail,
    start_redis_server,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.redis

SHARED = "127.0.0.1:6379"


def _bodies(n: int, tag: str = "m") -> list[bytes]:
    return [f'{{"task_id":"{tag}{i}"}}'.encode() for i in range(n)]


def _broker(url: str = SHARED, **options: Any) -> RedisBroker:
    return RedisBroker(BrokerConfig(broker_url=url, broker_transport_options=options))


@pytest.fixture
def shared() -> Iterator[redis.Redis]:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    client = redis.Redis(port=6379)
    yield client
    client.close()


@pytest.fixture
def cleanup(shared: redis.Redis) -> Iterator[list[str]]:
    """Queue names appended here have every key of theirs deleted after the test."""
    names: list[str] = []
    yield names
    for name in names:
        keys = [name, f"{name}.dlq", *shared.scan_iter(match=f"geboost:{name}:*")]
        shared.delete(*keys)


@pytest.fixture
def queue(queue_name: str, cleanup: list[str]) -> str:
    cleanup.append(queue_name)
    return queue_name


@pytest.fixture
def tmpdir_path() -> Iterator[str]:
    if not os.path.exists(REDIS_SERVER):
        skip_or_fail(f"{REDIS_SERVER} is not installed")
    with tempfile.TemporaryDirectory(prefix="geboost-redis-") as path:
        yield path


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("url", "host", "port", "db"),
    [
        ("", "localhost", 6379, 0),
        ("localhost:6379", "localhost", 6379, 0),
        ("10.0.0.5", "10.0.0.5", 6379, 0),
        ("redis://:pw@example.org:6380/3", "example.org", 6380, 3),
        ("redis://example.org?db=2", "example.org", 6379, 2),
    ],
)
def test_tcp_urls(url: str, host: str, port: int, db: int) -> None:
    target = _broker(url).target
    assert target.connection_class is Connection
    kw = target.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"]) == (host, port, db)


def test_password_user_unix_and_tls_urls() -> None:
    kw = _broker("redis://alice:p%40ss@h:1/0").target.connection_kwargs
    assert (kw["username"], kw["password"]) == ("alice", "p@ss")
    unix = _broker("unix://:pw@/run/redis.sock?db=4").target
    assert unix.connection_class is UnixDomainSocketConnection
    assert unix.connection_kwargs["path"] == "/run/redis.sock"
    assert unix.connection_kwargs["db"] == 4
    assert unix.connection_kwargs["password"] == "pw"
    assert "socket_keepalive" not in unix.connection_kwargs  # not a unix socket setting
    tls = _broker("rediss://h:6380", ssl_ca_certs="/ca.pem", ssl_cert_reqs="none").target
    assert tls.connection_class is SSLConnection
    assert tls.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert tls.connection_kwargs["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        ("amqp://h", {}, "amqp"),
        ("redis://h/notanumber", {}, "notanumber"),
        ("redis://h:99999999", {}, "99999999"),
        ("redis://h?socket_timeout=1", {}, "socket_timeout"),
        ("unix://", {}, "socket path"),
        ("redis://h", {"ssl_ca_certs": "/ca.pem"}, "ssl_ca_certs"),
        ("", {"special1": 1}, "special1"),
        ("", {"socket_timeout_s": "5"}, "socket_timeout_s"),
        ("", {"socket_timeout_s": 0}, "socket_timeout_s"),
        ("", {"pool_max_connections": 0}, "pool_max_connections"),
        ("", {"lease_timeout_s": 2.9, "heartbeat_interval_s": 1.0}, "lease_timeout_s"),
        ("", {"pool_max_connections": True}, "pool_max_connections"),
        ("", {"socket_keepalive": 1}, "socket_keepalive"),
        ("", {"ssl_cert_reqs": "maybe"}, "ssl_cert_reqs"),
    ],
)
def test_bad_configuration_is_named(url: str, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        _broker(url, **options)


def test_one_attempt_per_call_no_driver_retries() -> None:
    """A server that hangs up at once: redis-py's default policy would connect 4 times."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[int] = []  # the client port of each connection, in order

    def hang_up() -> None:
        while True:
            conn, peer = listener.accept()
            accepted.append(peer[1])
            conn.close()

    server = gevent.spawn(hang_up)
    broker = _broker(f"127.0.0.1:{listener.getsockname()[1]}")  # building does not connect
    try:
        assert accepted == []
        with pytest.raises(BrokerConnectionError):
            broker.publish("never", [b"x"])
        # Connections are accepted in the order they were made: once a probe made after the
        # publish is accepted, every attempt of the publish has been too.
        probe = socket.create_connection(listener.getsockname())
        probe_port = probe.getsockname()[1]
        try:
            assert wait_for(lambda: probe_port in accepted, 5)
        finally:
            probe.close()
        assert len(accepted) == 2 and accepted[1] == probe_port
    finally:
        server.kill()
        listener.close()
        broker.close()


def test_password_never_shown(queue_name: str) -> None:
    secret = "s3cr3t-Pa55"
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}", level="DEBUG")
    try:
        down = _broker(f"redis://:{secret}@127.0.0.1:{free_port()}/0")
        assert secret not in repr(down) and "***" in repr(down)
        assert secret not in repr(down.target)
        assert secret not in repr(down.target.connection_kwargs)
        booster = new_booster(
            BoostOptions(
                queue_name=queue_name,
                consume_func=print,
                broker_kind=BrokerKind.REDIS,
                broker_config=BrokerConfig(broker_url=f"redis://:{secret}@127.0.0.1:9/0"),
                push_retries=1,
                push_retry_interval_s=0.01,
                handle_signals=False,
            )
        )
        with pytest.raises(PublishError) as info:
            booster.push()
        assert secret not in str(info.value)
        receiver = down.open_receiver(queue_name)
        with pytest.raises(BrokerConnectionError) as again:
            receiver.fetch(1, 0.1)
        assert secret not in str(again.value) and secret not in repr(receiver)
        receiver.close()
        down.close()
        booster.stop()
    finally:
        logger.remove(sink)
    assert lines and not any(secret in line for line in lines)


# ---------------------------------------------------------------- private servers
def test_password_protected_server_and_unix_socket(tmpdir_path: str, queue_name: str) -> None:
    port = free_port()
    sock = os.path.join(tmpdir_path, "redis.sock")
    proc = start_redis_server(
        tmpdir_path, port, "--requirepass", "pw:with@odd", "--unixsocket", sock
    )
    try:
        for url in (
            f"redis://:pw%3Awith%40odd@127.0.0.1:{port}/1",
            f"unix://:pw%3Awith%40odd@{sock}",
        ):
            broker = _broker(url)
            broker.publish(queue_name, _bodies(3))
            receiver = broker.open_receiver(queue_name)
            got = receiver.fetch(5, 1.0)
            assert [d.body for d in got] == _bodies(3)
            receiver.ack(got)
            receiver.close()
            assert broker.count(queue_name) == 0
            broker.close()
        wrong = _broker(f"redis://:nope@127.0.0.1:{port}")
        with pytest.raises(BrokerAuthenticationError):  # refused, not a network failure
            wrong.count(queue_name)
        wrong.close()
    finally:
        stop_process(proc)


def test_tls_server(tmpdir_path: str, queue_name: str) -> None:
    if shutil.which("openssl") is None:
        skip_or_fail("openssl is not installed (needed to make a test certificate)")
    cert, key = os.path.join(tmpdir_path, "cert.pem"), os.path.join(tmpdir_path, "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", key, "-out", cert, "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key]
    tls += ["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
    # The plain port is only there to tell when the server is up.
    proc = start_redis_server(tmpdir_path, free_port(), *tls)
    try:
        broker = _broker(f"rediss://localhost:{port}", ssl_ca_certs=cert)
        broker.publish(queue_name, _bodies(2))
        receiver = broker.open_receiver(queue_name)
        got = receiver.fetch(2, 1.0)
        assert [d.body for d in got] == _bodies(2)
        receiver.ack(got)
        receiver.close()
        broker.close()
        untrusted = _broker(f"rediss://localhost:{port}")  # the system CAs do not know it
        with pytest.raises(BrokerConnectionError):
            untrusted.count(queue_name)
        untrusted.close()
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- the protocol on Redis
def test_layout_batch_fetch_fifo_and_counts(shared: redis.Redis, queue: str) -> None:
    broker = _broker()
    broker.publish(queue, _bodies(100))
    assert shared.llen(queue) == 100  # the queue is a plain list named like the queue
    shared.lpush(queue, b'{"task_id":"from-another-language"}')
    r = broker.open_receiver(queue)
    try:
        first = r.fetch(60, 1.0)
        assert [d.body for d in first] == _bodies(60)  # one call, FIFO
        assert broker.count(queue) == 41
        assert broker.in_flight(queue) == 60
        assert shared.llen(held_key(queue, r.consumer_id)) == 60
        assert shared.zscore(leases_key(queue), r.consumer_id) is not None
        r.ack(first)
        rest = r.fetch(100, 1.0)
        assert [d.body for d in rest][-1] == b'{"task_id":"from-another-language"}'
        r.ack(rest)
        # The first ack rode on the second take; the second goes with the owner's next step.
        assert broker.in_flight(queue) == len(rest)
        r.keepalive()
        assert broker.in_flight(queue) == 0
    finally:
        r.close()
        broker.close()
    assert shared.zscore(leases_key(queue), r.consumer_id) is None


def test_any_bytes_survive_the_batched_take_and_ack(shared: redis.Redis, queue: str) -> None:
    # A take returns its bodies as lengths plus one concatenation, and acks travel the same
    # way: bodies holding the separators, digits, CRLF, NUL, non-UTF-8 bytes or nothing at all
    # must come back whole and be removed exactly.
    odd = [b"", b",", b"12,3", b"a\r\nb", b"\x00\xff\xfe", b"%d", "é€".encode(), b"x" * 70_000]
    broker = _broker()
    broker.publish(queue, odd)
    r = broker.open_receiver(queue)
    try:
        got = r.fetch(100, 1.0)
        assert [d.body for d in got] == odd
        r.ack(got[:5])
        assert r.fetch(100, 0) == []  # the acks rode on this take
        assert shared.lrange(held_key(queue, r.consumer_id), 0, -1) == odd[5:][::-1]
        r.ack(got[5:])
        r.keepalive()
        assert broker.in_flight(queue) == 0
    finally:
        r.close()
        broker.close()


def test_acks_in_any_order_remove_exactly_what_they_name(shared: redis.Redis, queue: str) -> None:
    # The take cuts the run of acked bodies at the held list's tail with one LTRIM and removes
    # the others one by one: out of order, duplicated, or no longer held, each ack removes
    # exactly one copy of what it names and nothing else.
    broker = _broker()
    bodies = [*_bodies(6), b"dup", b"dup"]
    broker.publish(queue, bodies)
    r = broker.open_receiver(queue)
    held = held_key(queue, r.consumer_id)
    try:
        got = r.fetch(100, 1.0)
        assert [d.body for d in got] == bodies
        stranger = Delivery(b'{"task_id":"never-held"}')
        r.ack([got[3], got[0], got[1], got[6], stranger])  # m0, m1 at the tail; m3 and a dup not
        assert r.fetch(100, 0) == []
        m = _bodies(6)
        assert shared.lrange(held, 0, -1) == [b"dup", m[5], m[4], m[2]]  # newest first
        r.ack([got[2], got[7], got[5], got[4]])  # the whole rest, newest first
        r.keepalive()
        assert shared.exists(held) == 0
        assert broker.in_flight(queue) == 0 and broker.count(queue) == 0
    finally:
        r.close()
        broker.close()


def test_an_error_reply_to_a_take_raises_and_the_connection_goes_on(
    shared: redis.Redis, queue: str
) -> None:
    # The take's reply is read off the socket by geboost: an error reply (here WRONGTYPE, the
    # queue's key being a string) must raise at once, whole, and leave the connection usable.
    broker = _broker()
    r = broker.open_receiver(queue)
    try:
        shared.set(queue, "not a list")
        with pytest.raises(BrokerError, match="WRONGTYPE"):
            r.fetch(10, 0)
        shared.delete(queue)
        broker.publish(queue, _bodies(3))
        assert [d.body for d in r.fetch(10, 1.0)] == _bodies(3)
    finally:
        r.close()
        broker.close()


def test_a_server_that_forgot_the_scripts_gets_them_again(tmpdir_path: str) -> None:
    # A restarted or flushed server answers NOSCRIPT without running anything: the receiver
    # loads the script and sends the same take again, so nothing is taken twice or lost.
    port = free_port()
    server = start_redis_server(tmpdir_path, port)
    broker = _broker(f"127.0.0.1:{port}")
    client = redis.Redis(port=port)
    try:
        broker.publish("q", _bodies(6))
        r = broker.open_receiver("q")
        first = r.fetch(2, 1.0)
        client.script_flush()
        r.ack(first)
        second = r.fetch(2, 1.0)  # take (with the acks of the first two) after NOSCRIPT
        client.script_flush()
        r.requeue(second[1:])  # requeue, then heartbeat and ack, after NOSCRIPT each
        client.script_flush()
        r._next_beat = 0.0  # the beat is due
        r.keepalive()
        client.script_flush()
        r.ack(second[:1])
        r.keepalive()
        rest = r.fetch(10, 1.0)
        assert [d.body for d in first + second[:1] + rest] == _bodies(6)
        assert client.llen(held_key("q", r.consumer_id)) == 3  # m3 again, m4, m5
        client.script_flush()
        r.close()  # gives back the three it holds
        assert broker.count("q") == 3 and broker.in_flight("q") == 0
    finally:
        client.close()
        broker.close()
        stop_process(server)  # type: ignore[arg-type]


def test_requeue_goes_first_in_order_and_close_gives_back(shared: redis.Redis, queue: str) -> None:
    broker = _broker()
    broker.publish(queue, _bodies(6))
    a = broker.open_receiver(queue)
    got = a.fetch(4, 1.0)
    a.requeue(got[1:3])
    a.close()  # gives back got[0] and got[3]
    assert broker.in_flight(queue) == 0
    b = broker.open_receiver(queue)
    try:
        again = b.fetch(6, 1.0)
        # Given back on close: oldest taken first; then the requeued pair, then the untaken.
        order = [0, 3, 1, 2, 4, 5]
        assert [d.body for d in again] == [_bodies(6)[i] for i in order]
        b.ack(again)
    finally:
        b.close()
        broker.close()


def test_purge_and_chunked_publish_keep_fifo(queue: str) -> None:
    broker = _broker(publish_chunk_size=100)
    bodies = _bodies(1050)
    broker.publish(queue, bodies)
    assert broker.count(queue) == 1050
    r = broker.open_receiver(queue)
    try:
        got = r.fetch(1050, 1.0)
        assert [d.body for d in got] == bodies
        r.requeue(got)
        assert broker.count(queue) == 1050
        assert broker.purge(queue) == 1050
        assert broker.count(queue) == 0 and broker.purge(queue) == 0
    finally:
        r.close()
        broker.close()


def test_block_is_shorter_than_socket_timeout(queue: str) -> None:
    broker = _broker(socket_timeout_s=0.4)
    r = broker.open_receiver(queue)
    try:
        assert r.fetch(3, 2.0) == []  # a 2 s block would hit the 0.4 s socket timeout
        r.keepalive()
        gevent.spawn_later(0.1, broker.publish, queue, _bodies(2))
        got: list[Any] = []
        wait_for(lambda: bool(got.extend(r.fetch(3, 1.0))) or len(got) == 2, 5)
        assert [d.body for d in got] == _bodies(2)
        r.ack(got)
    finally:
        r.close()
        broker.close()


def test_lost_fetch_reply_is_given_back_on_reconnect(shared: redis.Redis, queue: str) -> None:
    broker = _broker()
    broker.publish(queue, _bodies(3))
    r = broker.open_receiver(queue)
    try:
        kept = r.fetch(1, 1.0)
        # The server moved one more to our held list but the reply never arrived.
        shared.lmove(queue, held_key(queue, r.consumer_id), "RIGHT", "LEFT")
        r.reconnect()
        assert shared.llen(held_key(queue, r.consumer_id)) == 1  # what we know we hold stays
        assert broker.count(queue) == 2
        r.ack(kept)
        rest = r.fetch(2, 1.0)
        assert [d.body for d in rest] == _bodies(3)[1:]
        r.ack(rest)
    finally:
        r.close()
        broker.close()


def test_errors_are_translated(shared: redis.Redis, queue: str) -> None:
    broker = _broker()
    shared.set(queue, b"not a list")
    with pytest.raises(BrokerError) as info:
        broker.publish(queue, [b"x"])
    assert not isinstance(info.value, BrokerConnectionError)
    assert not isinstance(info.value, redis.RedisError)
    r = broker.open_receiver(queue)
    with pytest.raises(BrokerError):
        r.fetch(1, 0.1)
    r.close()
    broker.close()
    down = _broker(f"127.0.0.1:{free_port()}")
    rd = down.open_receiver(queue)
    for call in (lambda: rd.fetch(1, 0.1), rd.reconnect, rd.keepalive, lambda: down.count(queue)):
        with pytest.raises(BrokerConnectionError):
            call()
    rd.close()  # never raises
    down.close()


# ---------------------------------------------------------------- leases
_FAST = {"heartbeat_interval_s": 0.1, "lease_timeout_s": 0.5, "recovery_interval_s": 0.1}


def test_dead_consumer_messages_come_back_live_ones_stay(queue: str) -> None:
    dead_broker, live_broker, watcher = _broker(**_FAST), _broker(**_FAST), _broker(**_FAST)
    dead = dead_broker.open_receiver(queue)
    live = live_broker.open_receiver(queue)
    watch = watcher.open_receiver(queue)
    try:
        dead_broker.publish(queue, _bodies(4))
        held_dead = dead.fetch(2, 1.0)
        held_live = live.fetch(2, 1.0)
        assert len(held_dead) == 2 and len(held_live) == 2
        dead_broker.close()  # its heartbeats stop: as if the process had been killed
        watch.fetch(1, 0.01)  # the watcher is consuming (and so recovering) too
        back: list[Any] = []
        # Back within lease + recovery interval (0.6 s); generous bound for a busy machine.
        assert wait_for(lambda: bool(back.extend(watch.fetch(4, 0.1))) or len(back) == 2, 10)
        assert sorted(d.body for d in back) == sorted(d.body for d in held_dead)
        # Three lease lengths pass (the server's clock says so through the live consumer's
        # renewed lease expiry) and the live consumer keeps its lease: nothing comes back.
        leases = redis.Redis(port=6379)
        try:

            def live_expiry_ms() -> float:
                return float(leases.zscore(leases_key(queue), live.consumer_id) or 0)

            renewed_from = live_expiry_ms()
            assert renewed_from > 0
            later = renewed_from + 3 * _FAST["lease_timeout_s"] * 1000
            assert wait_for(lambda: live_expiry_ms() >= later, 10)
        finally:
            leases.close()
        assert watch.fetch(4, 0.1) == []
        assert live_broker.in_flight(queue) == 4  # 2 still live, 2 taken again
        live.ack(held_live)
        watch.ack(back)
        dead.ack(held_dead)  # settled elsewhere already: ignored
        for r in (live, watch, dead):
            r.keepalive()  # the owner's next step sends the acks
        assert live_broker.in_flight(queue) == 0 and live_broker.count(queue) == 0
    finally:
        for r in (dead, live, watch):
            r.close()
        for b in (dead_broker, live_broker, watcher):
            b.close()


def test_connections_bounded_independent_of_concurrency(shared: redis.Redis, queue: str) -> None:
    name = f"gb-{queue}"
    broker = _broker(client_name=name, pool_max_connections=2, **_FAST)
    receivers = [broker.open_receiver(queue) for _ in range(3)]
    seen: list[int] = []

    def mine() -> int:
        return sum(1 for c in shared.client_list() if c.get("name") == name)

    def pusher(i: int) -> None:
        for j in range(5):
            broker.publish(queue, [f'{{"task_id":"{i}-{j}"}}'.encode()])

    def puller(r: Any) -> None:
        for _ in range(5):
            r.ack(r.fetch(50, 0.05))

    try:
        jobs = [gevent.spawn(pusher, i) for i in range(200)]
        jobs += [gevent.spawn(puller, r) for r in receivers]
        while not all(j.dead for j in jobs):
            seen.append(mine())
            gevent.sleep(0.01)
        gevent.joinall(jobs, raise_error=True)
    finally:
        for r in receivers:
            r.close()
        broker.close()
    assert max(seen) <= 2 + 3
    assert wait_for(lambda: mine() == 0, 5)  # everything closed


def test_booster_connections_do_not_grow_with_concurrent_num(
    shared: redis.Redis, queue: str, stop_after: list[Any]
) -> None:
    name = f"gb-{queue}"
    config = BrokerConfig(broker_url=SHARED, broker_transport_options={"client_name": name})
    counts: list[int] = []

    def task(i: int) -> None:
        # 300 greenlets share the broker's pool of 4 for this call (waiting is greenlet-aware).
        booster.message_count()
        gevent.sleep(0.05)

    booster = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=task,
            broker_kind=BrokerKind.REDIS,
            broker_config=config,
            conn_num=2,
            concurrent_num=300,
            handle_signals=False,
        )
    )
    stop_after.append(booster)
    booster.push_many([(i,) for i in range(1500)])
    booster.consume()
    while not booster.wait_until_idle(timeout_s=0.02, settle_s=0.01):
        counts.append(sum(1 for c in shared.client_list() if c.get("name") == name))
    booster.stop(timeout_s=5)
    print(f"\nconnections seen with 300 greenlets: max {max(counts)} in {len(counts)} samples")
    # conn_num + the broker's pool_max_connections + the one connection of the state store's
    # watcher (pause flag, worker registry): a fixed bound, whatever concurrent_num is.
    assert counts and max(counts) <= 2 + 4 + 1
    assert wait_for(lambda: not any(c.get("name") == name for c in shared.client_list()), 5)


@pytest.mark.parametrize("url", ["", "localhost:6379", "redis://localhost:6379/0"])
def test_default_and_short_urls_reach_the_local_server(
    shared: redis.Redis, queue: str, url: str
) -> None:
    broker = _broker(url)
    try:
        broker.publish(queue, _bodies(2))
        assert shared.llen(queue) == 2 and broker.count(queue) == 2
        assert broker.purge(queue) == 2
    finally:
        broker.close()


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_lease_clock_discounts_a_silence_once(shared: redis.Redis, queue: str) -> None:
    """The lease clock on its keys: a promise broken during a silence pushes every lease by the
    silence, once; a lease that expired while promises were kept is recovered."""
    broker = _broker(**_FAST)
    leases, promises, touched = (
        leases_key(queue),
        f"geboost:{queue}:promises",
        f"geboost:{queue}:touched",
    )
    try:
        now = _server_ms(shared)
        # "live" renewed just before a 5 s silence (nobody touched Q); its promise broke in it.
        shared.set(touched, now - 5000)
        shared.zadd(leases, {"live": now - 4700})
        shared.zadd(promises, {"live": now - 4800})
        shared.lpush(held_key(queue, "live"), b'{"task_id":"live"}')
        assert broker.recover(queue) == 0  # its lease had 300 ms left: it still has them
        pushed = shared.zscore(leases, "live")
        assert pushed is not None and now + 250 <= pushed <= now + 1000
        assert broker.recover(queue) == 0
        assert shared.zscore(leases, "live") == pushed  # the same broken promise: no new push
        # "gone" let its lease run out while Q was touched all along: its messages come back.
        now = _server_ms(shared)
        shared.set(touched, now - 50)
        shared.zadd(leases, {"gone": now - 100})
        shared.zadd(promises, {"gone": now - 200})
        shared.lpush(held_key(queue, "gone"), b'{"task_id":"gone"}')
        assert broker.recover(queue) == 1
        assert shared.llen(queue) == 1 and shared.llen(held_key(queue, "gone")) == 0
        assert shared.zscore(leases, "live") == pushed
    finally:
        broker.close()


def test_recovery_sweeps_the_legacy_consumers_zset(shared: redis.Redis, queue: str) -> None:
    """A consumer of an earlier geboost (last beat in ``geboost:Q:consumers``) silent for longer
    than the forget time still has its messages given back."""
    broker = _broker(**_FAST)
    legacy = f"geboost:{queue}:consumers"
    try:
        now = _server_ms(shared)
        shared.zadd(legacy, {"old-dead": now - 700_000, "old-live": now - 1000})
        shared.lpush(held_key(queue, "old-dead"), b'{"task_id":"a"}', b'{"task_id":"b"}')
        shared.lpush(held_key(queue, "old-live"), b'{"task_id":"c"}')
        assert broker.in_flight(queue) == 3
        assert broker.recover(queue) == 2
        assert shared.llen(queue) == 2 and shared.zrange(legacy, 0, -1) == [b"old-live"]
        assert broker.in_flight(queue) == 1
    finally:
        broker.close()


# ---------------------------------------------------------------- takes sent ahead
def test_takes_sent_ahead_hand_out_their_batches_in_order(shared: redis.Redis, queue: str) -> None:
    broker = _broker()
    broker.publish(queue, _bodies(12))
    r = broker.open_receiver(queue)
    held = held_key(queue, r.consumer_id)
    try:
        first = r.fetch(3, 1.0)
        r.ack(first)  # carried by the first take sent ahead
        r.send_ahead(3)
        r.send_ahead(3)
        assert r.ahead == 2
        second, third = r.fetch(3, 0), r.fetch(3, 0)
        assert r.ahead == 0
        assert [d.body for d in first + second + third] == _bodies(9)
        assert shared.lrange(held, 0, -1) == list(reversed(_bodies(9)[3:]))  # newest first
        assert broker.count(queue) == 3
        r.ack(second + third)
        r.keepalive()
        assert shared.exists(held) == 0
    finally:
        r.close()
        broker.close()


def test_other_operations_read_the_replies_on_their_way_first(
    shared: redis.Redis, queue: str
) -> None:
    # A requeue, a heartbeat and acks sent by themselves each read the takes' replies first
    # and keep them: the next fetches hand those batches out, in order.
    broker = _broker()
    broker.publish(queue, _bodies(9))
    r = broker.open_receiver(queue)
    try:
        first = r.fetch(3, 1.0)
        r.send_ahead(3)
        r.requeue(first[:1])  # m0 back at the taking end
        r.send_ahead(3)
        r._next_beat = 0.0  # a heartbeat is due
        r.keepalive()
        r.ack(first[1:])
        r.keepalive()
        m = _bodies(9)
        assert [d.body for d in r.fetch(3, 0)] == m[3:6]
        assert [d.body for d in r.fetch(3, 0)] == [m[0], m[6], m[7]]  # sent after the requeue
        assert [d.body for d in r.fetch(10, 0)] == [m[8]]
        assert broker.in_flight(queue) == 7  # m0, m3 .. m8
    finally:
        r.close()
        broker.close()
    assert broker.count(queue) == 7 and broker.in_flight(queue) == 0


@pytest.mark.parametrize("loaded_between", [False, True])
def test_takes_sent_ahead_to_a_server_that_forgot_the_script(
    tmpdir_path: str, loaded_between: bool
) -> None:
    # Both takes answered NOSCRIPT (nothing ran), or only the first (another client loaded
    # the script in between): each is sent again in its place, nothing taken twice or lost.
    port = free_port()
    server = start_redis_server(tmpdir_path, port)
    broker = _broker(f"127.0.0.1:{port}")
    client = redis.Redis(port=port)
    try:
        broker.publish("q", _bodies(9))
        r = broker.open_receiver("q")
        first = r.fetch(1, 1.0)
        client.script_flush()
        r.send_ahead(3)
        if loaded_between:
            client.script_load(SOURCES["take"])
        r.send_ahead(3)
        second, third = r.fetch(3, 0), r.fetch(3, 0)
        assert len(second) == len(third) == 3  # each take's batch for its own slots
        if loaded_between:  # the second take ran first: the first took what came after
            second, third = third, second
        assert [d.body for d in first + second + third] == _bodies(7)
        assert client.llen(held_key("q", r.consumer_id)) == 7
        assert broker.count("q") == 2
        r.close()
        assert broker.count("q") == 9 and broker.in_flight("q") == 0
    finally:
        client.close()
        broker.close()
        stop_process(server)  # type: ignore[arg-type]


def test_a_connection_lost_with_takes_on_their_way_loses_nothing(
    shared: redis.Redis, queue: str
) -> None:
    # The replies are lost with the connection: the messages those takes moved to the held
    # list go back to the queue on reconnect (orphans), the acks they carried go again.
    broker = _broker()
    broker.publish(queue, _bodies(9))
    r = broker.open_receiver(queue)
    try:
        first = r.fetch(3, 1.0)
        r.ack(first)
        r.send_ahead(3)
        r.send_ahead(3)
        assert wait_for(lambda: broker.count(queue) == 0, 5, 0.01)  # both ran on the server
        assert r._wire is not None
        r._wire.disconnect()  # as a network failure would: the replies never arrive
        with pytest.raises(BrokerConnectionError):
            r.fetch(3, 0)
        assert r.ahead == 0
        r.reconnect()
        again = r.fetch(10, 1.0)
        assert [d.body for d in again] == _bodies(9)[3:]
        r.ack(again)
        r.keepalive()
        assert broker.in_flight(queue) == 0 and broker.count(queue) == 0
    finally:
        r.close()
        broker.close()


def test_close_with_takes_on_their_way_gives_everything_back(
    shared: redis.Redis, queue: str
) -> None:
    broker = _broker()
    broker.publish(queue, _bodies(6))
    r = broker.open_receiver(queue)
    r.send_ahead(3)
    r.send_ahead(3)
    r.close()
    try:
        assert broker.count(queue) == 6 and broker.in_flight(queue) == 0
        r2 = broker.open_receiver(queue)
        assert [d.body for d in r2.fetch(10, 1.0)] == _bodies(6)
        r2.close()
    finally:
        broker.close()


def _shared_booster(queue: str, task: Any, **options: Any) -> Any:
    return new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=task,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=SHARED),
            handle_signals=False,
            **options,
        )
    )


def test_a_burst_with_retries_due_while_takes_are_ahead_completes(queue: str) -> None:
    # Quick calls make the puller send takes ahead for every free slot; retries falling due
    # meanwhile must still start (the takes ahead are handed out first, not waited behind).
    runs: dict[int, int] = {}

    def task(i: int) -> None:
        runs[i] = runs.get(i, 0) + 1
        if i % 50 == 0 and runs[i] == 1:
            raise ValueError("first attempt fails")

    booster = _shared_booster(queue, task, concurrent_num=10, max_retries=1, retry_backoff_s=0.001)
    n = 3000
    booster.push_many([(i,) for i in range(n)])
    booster.consume()
    try:
        assert booster.wait_until_idle(timeout_s=60)
        assert len(runs) == n
        assert {i: c for i, c in runs.items() if c != 1} == {i: 2 for i in range(0, n, 50)}
        assert booster.message_count() == 0
    finally:
        booster.stop(timeout_s=5)


@pytest.mark.parametrize("how", ["stop", "pause"])
def test_stopping_or_pausing_a_quick_burst_gives_back_what_did_not_start(
    queue: str, how: str
) -> None:
    # In the middle of a burst of quick calls, takes are on their way: their messages go
    # back unstarted. Every task then ran exactly once or is back in the queue, none held.
    runs: dict[int, int] = {}

    def task(i: int) -> None:
        runs[i] = runs.get(i, 0) + 1

    booster = _shared_booster(queue, task, concurrent_num=50)
    n = 200_000  # a pause is noticed within 0.5 s: more than that much work at full speed
    booster.push_many([(i,) for i in range(n)])
    booster.consume()
    try:
        assert wait_for(lambda: len(runs) >= 2000, 30, 0.001)
        if how == "pause":
            booster.pause()
            assert wait_for(lambda: booster.in_flight_count() == 0, 10, 0.01)
            ran = len(runs)
            gevent.sleep(0.6)  # longer than the pause check: nothing more starts
            assert len(runs) == ran
        booster.stop(timeout_s=5)
        assert set(runs.values()) == {1}
        assert len(runs) < n
        assert booster.in_flight_count() == 0
        assert booster.message_count() == n - len(runs)
    finally:
        booster.stop(timeout_s=5)
        if how == "pause":
            booster.resume()

"""``BrokerKind.REDIS``: at-least-once delivery over plain Redis lists, with leases renewed by
heartbeats (redis-py, Redis >= 6.2, a single server or a primary; not Redis Cluster).

Data layout, for a queue named ``Q`` (the dead-letter queue ``Q.dlq`` is a queue like any other):

- ``Q`` -- a LIST of waiting message bodies. Producers ``LPUSH``; consumers take from the right,
  so order is FIFO. Any program that can ``LPUSH`` a JSON task to ``Q`` is a producer.
- ``geboost:Q:held:<consumer id>`` -- a LIST per receiver of the messages it holds.
- ``geboost:Q:leases`` -- a ZSET: consumer id -> when its lease EXPIRES (server ms).
- ``geboost:Q:promises`` -- a ZSET: consumer id -> by when it promised to touch ``Q`` again.
- ``geboost:Q:touched`` -- the server time of the last touch (take, heartbeat or recovery).
- ``geboost:Q:p1`` .. ``geboost:Q:p9`` -- LISTs of waiting messages of priority 1..9 (0 is ``Q``).
- ``geboost:Q:delayed`` -- a ZSET of delayed messages, ``<priority digit><body>`` scored by
  their due time (server ms); the take script moves due ones to their list.
- ``geboost:Q:timed`` -- set by the first delayed or prioritised push (``publish_timed``); until
  it exists takes skip the two keys above. See the README ("Priorities and delays on Redis").

(``geboost:Q:consumers``, where earlier versions kept each consumer's last beat, is only read
to give back what a consumer silent there for ``forget`` time (>= 600 s) still held.)

Delivery. Taking a message and recording who holds it is one atomic server step: ``LMOVE``
(a Lua script moving up to N at once) or ``BLMOVE`` from ``Q`` into the receiver's held list.
If the reply is lost on the way, the message is safe in the held list; on ``reconnect`` the
receiver gives back what the server says it holds but it never received. ``ack`` removes
messages from the held list (``LREM`` each); they ride on the receiver's next take (one script
call for both), or go by themselves when no take comes soon. ``requeue`` and ``close`` move them
back to the taking end of ``Q``. A fetch costs one round trip when messages wait (the first
``BLMOVE`` blocks only when ``Q`` is empty, and for less than the socket timeout), so round trips
per message are about ``1 / batch size``. The take's reply is three parts whatever the batch
(status, the bodies' lengths, their concatenation) and its acks travel the same way: a client
parses and packs a few parts instead of one per message. A take may be sent ahead
(``send_ahead``: its owner's puller does it when calls are quick), its reply read by a later
fetch; replies come back in order, and any other command first reads the replies on their
way. A take's acks leave ``_unsent_acks`` when it is sent and count as settled when its reply
is read; a lost connection puts back the acks of takes whose reply never came, and the
messages those takes moved are orphans the reconnect gives back.

Leases. Each lease carries its own length: its owner writes ``server now + lease_timeout_s``
on every take and on every heartbeat (one small greenlet per broker renews all its open
receivers every ``heartbeat_interval_s``). The same greenlet, every ``recovery_interval_s`` and
for each queue it consumes, runs one atomic script that moves back to ``Q`` what consumers whose
lease expired by the server clock hold. Workers with different lease settings therefore judge
each other by the owner's settings, never their own, and workers' clocks need not agree.

Outages do not count against leases. Every take and heartbeat also records a promise: the
owner will touch ``Q`` again within 2 heartbeat intervals. Each script that touches ``Q``
first runs the lease clock (``redis_clock.lua``): if a promise that was still good at the last
touch is broken now, nobody reached ``Q`` for longer than its owner's tolerance -- Redis was
down or unreachable, or every worker stalled -- and every lease is pushed forward by the whole
silence since that touch. A lease thus keeps after an outage of any length what it had left
before it (at least ``lease_timeout_s - heartbeat_interval_s``), and the live worker renews
within half an interval of reaching Redis again. A silence shorter than a promise counts, which
is why ``lease_timeout_s`` must be at least 3 heartbeat intervals. Promises are never pushed, so
a dead consumer's broken promise pushes leases once, by at most the gap between two touches of
the live ones.

What that gives: a call on a live worker keeps its lease however long it runs and however
long Redis is away (beats come from the process, not from the call). A SIGKILLed or unplugged
worker's messages are running again within ``lease_timeout_s + recovery_interval_s`` (40 s by
default, plus one beat of a live worker) as long as any consumer of ``Q`` is alive; when none is,
time with no worker at all looks like an outage, so they come back within ``lease_timeout_s``
after the next consumer starts. They may run twice, never zero times, when the worker was
alive after all: cut off from Redis while others were not, or with its event loop blocked (CPU-
bound code that never yields) for longer than its lease while others kept the queue touched.

Connections: one per receiver (``conn_num`` per booster), spoken to directly
(``redis_wire.Wire``: redis-py's connection without a client's dispatch), plus one shared pool
of at most ``pool_max_connections`` for publishing, counts and heartbeats, whose waiting is
greenlet-aware, however large ``concurrent_num`` is. Every call makes ONE attempt (redis-py's
own retries are off); failures raise ``BrokerConnectionError`` / ``BrokerError``, never a
redis-py exception.

Transport options (``BrokerConfig.broker_transport_options``):

| option | type | default | meaning |
|---|---|---|---|
| ``socket_timeout_s`` | float | 5 | a command not answered in this time fails its connection |
| ``socket_connect_timeout_s`` | float | 3 | longest wait to open a connection |
| ``socket_keepalive`` | bool | True | TCP keepalive on broker sockets (not for ``unix://``) |
| ``health_check_interval_s`` | float | 30 | PING a connection idle this long before use; 0 = off |
| ``client_name`` | str | "" | ``CLIENT SETNAME`` of every connection (shows in ``CLIENT LIST``) |
| ``pool_max_connections`` | int | 4 | size of the shared pool (publish, counts, heartbeats) |
| ``pool_timeout_s`` | float | 10 | longest a greenlet waits for a free pool connection |
| ``heartbeat_interval_s`` | float | 5 | how often a live broker renews its consumers' leases |
| ``lease_timeout_s`` | float | 30 | silence after which a consumer counts as dead (>= 3 beats) |
| ``recovery_interval_s`` | float | 10 | how often each live consumer process looks for dead ones |
| ``publish_chunk_size`` | int | 10000 | bodies per ``LPUSH``; larger batches go in one MULTI |
| ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` | str | "" | TLS files (rediss:// only) |
| ``ssl_cert_reqs`` | str | "required" | server certificate check: required, optional, none |
| ``ssl_check_hostname`` | bool | True | match the server certificate to the host name |
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from typing import Any, cast

import gevent
from gevent.event import Event
from redis import BlockingConnectionPool, ConnectionPool, Redis
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import AuthenticationWrongNumberOfArgsError, NoScriptError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from geboost.brokers.base import BrokerConfig, Delivery
from geboost.brokers.redis_config import RedisSettings, RedisTarget, parse_target
from geboost.brokers.redis_scripts import SOURCES, RedisScripts
from geboost.brokers.redis_wire import LuaScript, Wire, bulk
from geboost.errors import BrokerAuthenticationError, BrokerConnectionError, BrokerError
from geboost.log import queue_logger

__all__ = ["RedisBroker", "RedisReceiver", "held_key", "leases_key"]

_SCRIPT_CHUNK = 1000  # bodies per script call when acking or requeueing a huge batch
_SHORT_WAIT_S = 0.2  # waits shorter than this poll instead of blocking in BLMOVE
_FORGET_AFTER_MIN_S = 600.0  # dead consumers' ids are swept for at least this long
# The scripts a receiver runs on its own connection (the broker's shared client has its own).
_TAKE = LuaScript(SOURCES["take"])
_ACK = LuaScript(SOURCES["ack"])
_REQUEUE = LuaScript(SOURCES["requeue"])
_RELEASE = LuaScript(SOURCES["release"])
_HEARTBEAT = LuaScript(SOURCES["heartbeat"])


def leases_key(queue_name: str) -> str:
    return f"geboost:{queue_name}:leases"


def promises_key(queue_name: str) -> str:
    return f"geboost:{queue_name}:promises"


def clock_key(queue_name: str) -> str:
    return f"geboost:{queue_name}:touched"


def legacy_consumers_key(queue_name: str) -> str:
    """Where geboost kept last-beat times before leases carried their own expiry."""
    return f"geboost:{queue_name}:consumers"


def lease_keys(queue_name: str) -> list[str]:
    """The keys the lease clock (``redis_clock.lua``) works on, in its order."""
    return [leases_key(queue_name), promises_key(queue_name), clock_key(queue_name)]


WAKE_TOKEN = "geboost:wake"
"""Pushed by ``redis_push_timed.lua`` on an empty ``Q`` to wake consumers blocked in BLMOVE;
takers drop it (never a message: not a JSON document) and counts leave it out."""
_WAKE_BYTES = WAKE_TOKEN.encode()


def timed_key(queue_name: str) -> str:
    """Exists once a delayed or prioritised message was pushed: takers then look further."""
    return f"geboost:{queue_name}:timed"


def delayed_key(queue_name: str) -> str:
    return f"geboost:{queue_name}:delayed"


def lane_prefix(queue_name: str) -> str:
    """``geboost:Q:p1`` .. ``geboost:Q:p9``: the lists of priorities 1..9 (0 is ``Q`` itself)."""
    return f"geboost:{queue_name}:p"


def held_prefix(queue_name: str) -> str:
    return f"geboost:{queue_name}:held:"


def held_key(queue_name: str, consumer_id: str) -> str:
    return held_prefix(queue_name) + consumer_id


def _translate(exc: RedisError | OSError, action: str, where: str) -> BrokerError:
    """redis-py's exceptions become ours here, and nowhere else."""
    if isinstance(exc, (RedisAuthenticationError, AuthenticationWrongNumberOfArgsError)):
        # Before ConnectionError, its base class in redis-py: a refused password is not a
        # network failure, and retrying at once cannot fix it.
        return BrokerAuthenticationError(
            f"redis {where}: {action} failed: authentication refused: {exc}"
        )
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return BrokerConnectionError(f"redis {where}: {action} failed: {exc}")
    return BrokerError(f"redis {where}: {action} failed: {exc}")


@contextmanager
def _translated(action: str, where: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise _translate(exc, action, where) from exc


class RedisBroker:
    """``BrokerKind.REDIS``; see the module docstring. Building it does not connect."""

    def __init__(self, config: BrokerConfig) -> None:
        options = dict(config.broker_transport_options)
        self.settings = RedisSettings.from_options(options)
        self.target: RedisTarget = parse_target(config.broker_url, self.settings, options)
        self._pool: BlockingConnectionPool | None = None
        self._client: Redis | None = None
        self._scripts: RedisScripts | None = None
        self._live: dict[str, RedisReceiver] = {}  # consumer id -> open receiver
        self._beater: gevent.Greenlet[Any, None] | None = None
        self._beater_stop = Event()

    def __repr__(self) -> str:
        return f"RedisBroker({self.target.display})"

    # ----------------------------------------------------------------- connections
    def new_connection_pool(self, max_connections: int) -> ConnectionPool:
        return ConnectionPool(
            connection_class=self.target.connection_class,
            max_connections=max_connections,
            **self.target.connection_kwargs,
        )

    def _shared(self) -> Redis:
        """The client on the shared pool, made on first use."""
        if self._client is None:
            self._pool = self.target.shared_pool(
                self.settings.pool_max_connections, self.settings.pool_timeout_s
            )
            self._client = Redis(connection_pool=self._pool)
            self._scripts = RedisScripts(self._client)
        return self._client

    @property
    def scripts(self) -> RedisScripts:
        self._shared()
        assert self._scripts is not None
        return self._scripts

    @contextmanager
    def _guard(self, action: str) -> Iterator[Redis]:
        try:
            with _translated(action, self.target.display):
                yield self._shared()
        except BrokerConnectionError:
            # Pooled connections to a server that went away would each fail once more.
            if self._pool is not None:
                self._pool.disconnect(inuse_connections=False)
            raise

    # ----------------------------------------------------------------- queue-wide operations
    def publish(self, queue_name: str, bodies: Sequence[bytes]) -> None:
        if not bodies:
            return
        chunk = self.settings.publish_chunk_size
        with self._guard(f"publish to {queue_name!r}") as client:
            if len(bodies) <= chunk:
                client.lpush(queue_name, *bodies)
                return
            # All chunks or none: a retried batch must not half-duplicate.
            pipe = client.pipeline(transaction=True)
            for start in range(0, len(bodies), chunk):
                pipe.lpush(queue_name, *bodies[start : start + chunk])
            pipe.execute()

    def publish_timed(
        self, queue_name: str, bodies: Sequence[bytes], *, delay_s: float, priority: int
    ) -> None:
        if not bodies:
            return
        lane = lane_prefix(queue_name) + str(priority) if priority else queue_name
        keys = [timed_key(queue_name), delayed_key(queue_name), lane, queue_name]
        delay_ms = math.ceil(delay_s * 1000) if delay_s > 0 else 0
        chunk = self.settings.publish_chunk_size
        with self._guard(f"publish to {queue_name!r}"):
            push = self.scripts.push_timed
            if len(bodies) <= chunk:
                push(keys, [delay_ms, priority, *bodies])
                return
            pipe = self._shared().pipeline(transaction=True)
            for start in range(0, len(bodies), chunk):
                push(keys, [delay_ms, priority, *bodies[start : start + chunk]], client=pipe)
            pipe.execute()

    def open_receiver(self, queue_name: str, *, window: int = 100) -> RedisReceiver:
        # Redis hands out only what fetch asks for: nothing is pushed ahead, so no window.
        return RedisReceiver(self, queue_name)

    def count(self, queue_name: str) -> int:
        """Messages waiting: in ``Q``, in the priority lists and delayed."""
        with self._guard(f"count {queue_name!r}") as client:
            pipe = client.pipeline(transaction=False)
            for key in self._waiting_keys(queue_name):
                pipe.llen(key)
            pipe.zcard(delayed_key(queue_name))
            pipe.lpos(queue_name, WAKE_TOKEN, rank=-1)  # a wake-up token (at most one)
            *counts, token = pipe.execute()
            return sum(int(n) for n in counts) - (token is not None)

    def delayed_count(self, queue_name: str) -> int | None:
        with self._guard(f"delayed_count {queue_name!r}") as client:
            return int(client.zcard(delayed_key(queue_name)))

    @staticmethod
    def _waiting_keys(queue_name: str) -> list[str]:
        return [queue_name, *(lane_prefix(queue_name) + str(p) for p in range(1, 10))]

    def in_flight(self, queue_name: str) -> int | None:
        with self._guard(f"in_flight {queue_name!r}"):
            keys = [leases_key(queue_name), legacy_consumers_key(queue_name)]
            return int(self.scripts.in_flight(keys, [held_prefix(queue_name)]))

    def purge(self, queue_name: str) -> int:
        with self._guard(f"purge {queue_name!r}") as client:
            pipe = client.pipeline(transaction=True)
            keys = self._waiting_keys(queue_name)
            for key in keys:
                pipe.llen(key)
            pipe.zcard(delayed_key(queue_name))
            pipe.lpos(queue_name, WAKE_TOKEN, rank=-1)
            pipe.delete(*keys, delayed_key(queue_name))
            *counts, token, _ = pipe.execute()
            return sum(int(n) for n in counts) - (token is not None)

    def recover(self, queue_name: str) -> int:
        """Give back what consumers of ``queue_name`` with expired leases hold; how many.

        Runs by itself every ``recovery_interval_s`` while a receiver of the queue is open.
        """
        s = self.settings
        forget_s = max(10 * s.lease_timeout_s, _FORGET_AFTER_MIN_S)
        with self._guard(f"recover {queue_name!r}"):
            found = self.scripts.recover(
                [*lease_keys(queue_name), queue_name, legacy_consumers_key(queue_name)],
                [int(forget_s * 1000), held_prefix(queue_name)],
            )
        total = 0
        log = queue_logger(queue_name)
        for consumer_id, moved in zip(found[::2], found[1::2], strict=True):
            total += int(moved)
            log.warning(
                "consumer {} let its lease run out; its {} message(s) are back on the queue",
                consumer_id.decode(errors="replace"),
                int(moved),
            )
        return total

    def close(self) -> None:
        self._beater_stop.set()
        beater, self._beater = self._beater, None
        if beater is not None:
            beater.join(timeout=1.0)
            if not beater.dead:
                beater.kill(block=False)
        pool, self._pool, self._client, self._scripts = self._pool, None, None, None
        if pool is not None:
            pool.disconnect()

    # ----------------------------------------------------------------- heartbeats
    def register(self, receiver: RedisReceiver) -> None:
        """Keep ``receiver``'s lease alive from now on (until ``unregister``)."""
        self._live[receiver.consumer_id] = receiver
        if self._beater is None or self._beater.dead:
            self._beater_stop = Event()
            self._beater = gevent.spawn(self._beat_forever, self._beater_stop)

    def unregister(self, receiver: RedisReceiver) -> None:
        self._live.pop(receiver.consumer_id, None)

    def _beat_forever(self, stop: Event) -> None:
        """Renew every open receiver's lease and recover dead consumers, on a fixed schedule.

        Beats keep their schedule (a late one does not delay the next): a beat later than one
        interval breaks this process's promise and counts as a broker outage on the server
        (see the module docstring). After a failure both are retried every half interval, so
        that a worker coming back after an outage renews well before its lease runs out.
        Leaves when no receiver is open or the broker closes. Failures are logged once per
        outage: the pullers already report the broker being away.
        """
        s = self.settings
        retry_s = min(s.heartbeat_interval_s, s.recovery_interval_s) / 2
        next_beat = 0.0
        next_recovery: dict[str, float] = {}
        failing = False
        while self._live and not stop.is_set():
            now = time.monotonic()
            queue_names = {r.queue_name for r in self._live.values()}
            try:
                if now >= next_beat:
                    self._beat_once()
                    next_beat += s.heartbeat_interval_s
                    if next_beat <= now:  # the first beat, or far behind after an outage
                        next_beat = now + s.heartbeat_interval_s
                for queue_name in queue_names:
                    if now >= next_recovery.get(queue_name, 0.0):
                        self.recover(queue_name)
                        next_recovery[queue_name] = now + s.recovery_interval_s
            except BrokerError as exc:
                if not failing:
                    queue_logger(", ".join(sorted(queue_names))).warning(
                        "lease heartbeat failed: {}; retrying every {} s", exc, retry_s
                    )
                failing = True
            except Exception:
                # A bug here must not end the leases of a live process: log it and go on.
                queue_logger(", ".join(sorted(queue_names))).exception(
                    "lease heartbeat hit an unexpected error; retrying in {} s", retry_s
                )
                failing = True
            else:
                failing = False
            if failing:
                stop.wait(retry_s)
                continue
            due = min([next_beat, *(next_recovery.get(q, 0.0) for q in queue_names)])
            stop.wait(max(0.0, due - time.monotonic()))

    def _beat_once(self) -> None:
        by_queue: dict[str, list[str]] = {}
        for consumer_id, receiver in list(self._live.items()):
            by_queue.setdefault(receiver.queue_name, []).append(consumer_id)
        for queue_name, ids in by_queue.items():
            with self._guard(f"heartbeat {queue_name!r}"):
                self.scripts.heartbeat(lease_keys(queue_name), [*self.settings.lease_args, *ids])


class _SentTake:
    """A take sent on a receiver's wire: the acks it carries, its command (sent again after
    NOSCRIPT), and its reply once read."""

    __slots__ = ("acks", "packed", "reply")

    def __init__(self, acks: list[bytes], packed: bytes) -> None:
        self.acks = acks
        self.packed = packed
        self.reply: tuple[int, bytes, bytes] | None = None


class RedisReceiver:
    """One dedicated connection taking from one queue into this receiver's held list."""

    round_trip_fetch = True  # every take is a round trip: the puller overlaps it with calls

    def __init__(self, broker: RedisBroker, queue_name: str) -> None:
        self._broker = broker
        self.queue_name = queue_name
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._keys = [queue_name, held_key(queue_name, self.consumer_id)]
        self._timed_keys = [timed_key(queue_name), delayed_key(queue_name)]
        self._lane_prefix = lane_prefix(queue_name)
        self._lease_keys = lease_keys(queue_name)
        self._wire: Wire | None = None
        # The take's command up to its last three arguments, in RESP form once and for all:
        # EVALSHA, 7 keys, promise ms, lease ms, consumer id, lane prefix (see redis_take.lua).
        fixed = [
            "EVALSHA",
            _TAKE.sha,
            7,
            *self._lease_keys,
            *self._keys,
            *self._timed_keys,
            *broker.settings.lease_args,
            self.consumer_id,
            self._lane_prefix,
        ]
        self._take_head = b"*%d\r\n" % (len(fixed) + 3) + b"".join(
            bulk(str(arg).encode()) for arg in fixed
        )
        # What this receiver handed out and not yet settled (body -> how many times): tells
        # orphans (taken on the server, reply lost) from deliveries the engine still works on.
        self._outstanding: dict[bytes, int] = {}
        # Acked by the engine, not yet removed on the server: they ride on the next take (one
        # round trip for acks and fetch), or go by themselves from keepalive() and close().
        self._unsent_acks: list[bytes] = []
        self._quiet = False  # the last fetch found a plain queue empty
        # Takes sent and not handed out yet, oldest first (``send_ahead``): those read (by an
        # operation that must not mix its reply with theirs) come before those still unread.
        self._takes: deque[_SentTake] = deque()
        self._next_beat = 0.0
        self._log = queue_logger(queue_name)

    def __repr__(self) -> str:
        return (
            f"RedisReceiver({self._broker.target.display}, {self.queue_name!r}, {self.consumer_id})"
        )

    def _open_wire(self) -> Wire:
        if self._wire is None:
            self._wire = Wire(self._broker.target)
            self._broker.register(self)
        return self._wire

    def _failed(self, wire: Wire, action: str, exc: RedisError | OSError) -> BrokerError:
        error = _translate(exc, f"{action} on {self.queue_name!r}", self._broker.target.display)
        if isinstance(error, BrokerConnectionError):
            wire.disconnect()
        return error

    def _failed_take(self, wire: Wire, action: str, exc: RedisError | OSError) -> BrokerError:
        self._abandon_takes(wire)
        return self._failed(wire, action, exc)

    def _abandon_takes(self, wire: Wire) -> None:
        """After a failure with takes not handed out: they are dropped, and so is the
        connection, on which their replies may still be coming."""
        if self._takes:
            self._drop_takes()
            wire.disconnect()

    def _drop_takes(self) -> None:
        """Forget the takes sent and not handed out: their messages, held on the server and
        not outstanding, come back as orphans on the next connection; acks whose take's reply
        was not read go again."""
        unsent = [ack for take in self._takes if take.reply is None for ack in take.acks]
        self._unsent_acks[:0] = unsent
        self._takes.clear()

    @contextmanager
    def _guard(self, action: str) -> Iterator[Wire]:
        wire = self._open_wire()
        try:
            self._read_takes(wire)  # replies of takes sent ahead come before this one's
            yield wire
        except (RedisError, OSError) as exc:
            raise self._failed_take(wire, action, exc) from exc

    @property
    def ahead(self) -> int:
        """How many takes were sent ahead and not handed out by ``fetch`` yet."""
        return len(self._takes)

    def send_ahead(self, count: int) -> None:
        """Send a take of up to ``count`` messages now; a later ``fetch`` hands its messages
        out, oldest take first, with ``max_count`` equal to its ``count`` (the owner holds that
        many slots for it meanwhile). The server prepares the next batches while this one's
        calls run. Any other operation reads the replies on their way first and keeps them."""
        wire = self._open_wire()
        try:
            self._send_take(wire, count)
        except (RedisError, OSError) as exc:
            raise self._failed_take(wire, "fetch", exc) from exc
        except BaseException:
            self._abandon_takes(wire)
            raise

    def fetch(self, max_count: int, timeout_s: float) -> list[Delivery]:
        # The hot path: the same as ``with self._guard("fetch")``, without its generator.
        wire = self._open_wire()
        try:
            if self._takes:
                status, bodies = self._hand_out_take(wire)
                if not bodies and self._takes:
                    return []  # the next take's reply is still to come: no wait in between
            elif self._quiet and not self._unsent_acks and timeout_s >= _SHORT_WAIT_S:
                # A plain queue that was empty the last time: straight back to BLMOVE. An idle
                # worker then sends one command per wait, not a take script (about eight
                # commands on the server) as well; its lease is renewed by the heartbeats.
                status, bodies = 0, list[bytes]()
            else:
                status, bodies = self._take(wire, max_count)
            if not bodies and timeout_s > 0:
                bodies = self._wait_and_take(wire, max_count, timeout_s, status)
            self._quiet = not bodies and status == 0
        except (RedisError, OSError) as exc:
            raise self._failed_take(wire, "fetch", exc) from exc
        except BaseException:
            self._abandon_takes(wire)  # interrupted (the owner is being killed)
            raise
        outstanding = self._outstanding
        consumer_id = self.consumer_id
        deliveries = []
        for body in bodies:
            outstanding[body] = outstanding.get(body, 0) + 1
            deliveries.append(Delivery(body, consumer_id))
        return deliveries

    def _wait_and_take(
        self, wire: Wire, max_count: int, timeout_s: float, status: int
    ) -> list[bytes]:
        """Wait up to ``timeout_s`` for messages: in ``BLMOVE`` on ``Q`` (one command however
        long; a delayed or prioritised push wakes it with an empty token on ``Q``), and by
        sleeping for the last stretch before a delayed message is due.

        Short waits are a sleep and a second take: Redis checks blocking timeouts only every
        1/hz s (100 ms by default), so a 50 ms BLMOVE would in fact wait up to twice that.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            wait_s = deadline - time.monotonic()
            due_s = status / 1000 if status > 0 else math.inf
            if wait_s <= 0:
                return []
            if min(wait_s, due_s) < _SHORT_WAIT_S:
                gevent.sleep(min(wait_s, due_s))
                status, bodies = self._take(wire, max_count)
                if bodies or due_s > wait_s:
                    return bodies
                continue
            # Wake a little before a due time, then sleep the rest precisely.
            block_s = min(wait_s, due_s - _SHORT_WAIT_S / 2)
            first = wire.call(
                "BLMOVE", self._keys[0], self._keys[1], "RIGHT", "LEFT", self._block_s(block_s)
            )
            if first is None and due_s == math.inf:
                return []  # as before timed pushes: one BLMOVE per idle fetch
            bodies = []
            if first == _WAKE_BYTES:
                wire.call("LREM", self._keys[1], 1, WAKE_TOKEN)  # push_timed's wake-up token
            elif first is not None:
                bodies = [cast(bytes, first)]
            if not bodies or max_count > 1:
                status, more = self._take(wire, max_count - len(bodies))
                bodies += more
            if bodies:
                return bodies

    def _take(self, wire: Wire, count: int) -> tuple[int, list[bytes]]:
        """(status, bodies): see ``redis_take.lua`` for the status. Sends the unsent acks in
        the same script call, as their lengths and their concatenation (two arguments, not
        one per ack). Only with no take sent ahead (its reply would come first)."""
        assert not self._takes
        self._send_take(wire, count)
        return self._hand_out_take(wire)

    def _send_take(self, wire: Wire, count: int) -> None:
        acks = self._unsent_acks[:_SCRIPT_CHUNK]
        del self._unsent_acks[: len(acks)]  # on their way: the next take must not carry them
        packed = b"".join(
            (
                self._take_head,
                bulk(b"%d" % count),
                bulk(b",".join([b"%d" % len(body) for body in acks])),
                bulk(b"".join(acks)),
            )
        )
        self._takes.append(_SentTake(acks, packed))
        wire.send_take(packed)

    def _hand_out_take(self, wire: Wire) -> tuple[int, list[bytes]]:
        """The oldest take sent: its reply (read now if it was not yet), and it is forgotten."""
        take = self._takes[0]
        if take.reply is None:
            self._read_take(wire, take)
        self._takes.popleft()
        assert take.reply is not None
        status, lengths, joined = take.reply
        if not lengths:
            return status, []
        ends = list(accumulate(map(int, lengths.split(b","))))
        return status, [joined[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]

    def _read_takes(self, wire: Wire) -> None:
        """Read the reply of every take sent (they are kept for ``fetch``)."""
        for take in self._takes:
            if take.reply is None:
                self._read_take(wire, take)

    def _read_take(self, wire: Wire, take: _SentTake) -> None:
        """Read ``take``'s reply, the next on the wire: the takes before it have theirs."""
        if not self._read_reply(wire, take):
            self._after_noscript(wire)

    def _read_reply(self, wire: Wire, take: _SentTake) -> bool:
        """``take``'s reply, the next on the wire; False if it was NOSCRIPT (nothing ran)."""
        try:
            take.reply = wire.read_triple()
        except NoScriptError:
            return False
        self._took(take)
        return True

    def _after_noscript(self, wire: Wire) -> None:
        """The server forgot the script (restarted, flushed): nothing ran for a take answered
        NOSCRIPT. The replies of the takes sent after it are read first (another worker may
        have loaded the script in between), then the script is loaded and each take answered
        NOSCRIPT sent again, in order, and its reply read: every take keeps its place."""
        unread = [take for take in self._takes if take.reply is None]
        redo = unread[:1] + [take for take in unread[1:] if not self._read_reply(wire, take)]
        wire.load(_TAKE)
        for take in redo:
            wire.send_take(take.packed)
            take.reply = wire.read_triple()
            self._took(take)

    def _took(self, take: _SentTake) -> None:
        if take.acks:
            self._settled(take.acks)
        self._next_beat = time.monotonic() + self._broker.settings.heartbeat_interval_s

    def _block_s(self, timeout_s: float) -> float:
        # Shorter than the socket timeout, or a quiet queue would look like a dead server;
        # never 0, which BLMOVE reads as "forever".
        return max(0.01, min(timeout_s, self._broker.settings.socket_timeout_s / 2))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settled on the server by the next take (same round trip), or by ``keepalive`` /
        ``close`` when no take comes: the owner calls one of them within its next step."""
        self._unsent_acks.extend(d.body for d in deliveries)
        if len(self._unsent_acks) >= _SCRIPT_CHUNK:
            self._send_acks()

    def _send_acks(self) -> None:
        if not self._unsent_acks:
            return
        with self._guard("ack") as wire:
            bodies = self._unsent_acks
            for start in range(0, len(bodies), _SCRIPT_CHUNK):
                wire.run(_ACK, self._keys[1:], bodies[start : start + _SCRIPT_CHUNK])
        self._unsent_acks = []
        self._settled(bodies)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        bodies = [d.body for d in deliveries]
        with self._guard("requeue") as wire:
            self._requeue_bodies(wire, bodies)
        self._settled(bodies)

    def _requeue_bodies(self, wire: Wire, bodies: list[bytes]) -> int:
        moved = 0
        # Each call puts its first body at the taking end; the last chunk goes first so that
        # the batch keeps its order.
        starts = range(0, len(bodies), _SCRIPT_CHUNK)
        for start in reversed(starts):
            chunk = bodies[start : start + _SCRIPT_CHUNK]
            moved += int(wire.run(_REQUEUE, self._keys, chunk))
        return moved

    def _settled(self, bodies: list[bytes]) -> None:
        outstanding = self._outstanding
        for body in bodies:
            left = outstanding.pop(body, 0) - 1
            if left > 0:
                outstanding[body] = left

    def keepalive(self) -> None:
        self._send_acks()  # no take is coming soon: the owner waits for a slot or the limiter
        if time.monotonic() < self._next_beat:
            return
        with self._guard("heartbeat") as wire:
            wire.run(
                _HEARTBEAT, self._lease_keys, [*self._broker.settings.lease_args, self.consumer_id]
            )
        self._next_beat = time.monotonic() + self._broker.settings.heartbeat_interval_s

    def reconnect(self) -> None:
        # Takes on their way, or read and not handed out, are lost with the old connection.
        self._drop_takes()
        with self._guard("reconnect") as wire:
            wire.disconnect()
            wire.call("PING")
            self._give_back_orphans(wire)

    def _give_back_orphans(self, wire: Wire) -> None:
        """Requeue what the server records as ours but whose fetch reply never arrived."""
        held = cast("list[bytes]", wire.call("LRANGE", self._keys[1], 0, -1))
        orphans = Counter(held) - Counter(self._outstanding)
        if not orphans:
            return
        bodies: list[bytes] = []
        for body in reversed(held):  # oldest taken first
            if orphans[body] > 0:
                orphans[body] -= 1
                bodies.append(body)
        moved = self._requeue_bodies(wire, bodies)
        self._log.warning(
            "{} message(s) taken by a fetch whose reply was lost are back on the queue", moved
        )

    def close(self) -> None:
        if self._wire is not None and self._unsent_acks:
            try:
                self._send_acks()
            except BrokerError as exc:
                self._log.warning(
                    "could not send the last {} ack(s) on close ({}); those messages may run again",
                    len(self._unsent_acks),
                    exc,
                )
        self._broker.unregister(self)
        wire, self._wire = self._wire, None
        if wire is None:
            return
        try:
            with _translated(f"close on {self.queue_name!r}", self._broker.target.display):
                self._read_takes(wire)  # what they took is held: the release gives it back
                moved = wire.run(_RELEASE, [*self._keys, *self._lease_keys[:2]], [self.consumer_id])
            if moved:
                self._log.debug("gave back {} unsettled message(s) on close", moved)
        except BrokerError as exc:
            # Only messages the engine has not settled are worth a warning; what a lost fetch
            # reply may have left held comes back with the lease like anything else.
            log = self._log.warning if self._outstanding else self._log.debug
            log(
                "could not give back held messages on close ({}); they return to the queue "
                "within {} s, when this consumer's lease has run out",
                exc,
                self._broker.settings.recovery_bound_s,
            )
        finally:
            self._outstanding.clear()
            self._unsent_acks = []  # those not sent come back with the release or the lease
            self._takes.clear()
            wire.disconnect()

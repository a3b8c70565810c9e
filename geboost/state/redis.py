"""The Redis state store (redis-py): plain keys with ``PX`` expiry, and notifications on
pub/sub.

Connections: one ``BlockingConnectionPool`` of at most ``pool_max_connections`` (greenlet-aware
waits: gevent's ``LifoQueue``) for reads and writes, and, once something watches, ONE more
connection held by a listener greenlet subscribed to the pattern ``geboost:*``. Watchers
register a gevent ``Event`` per (channel, token) locally; the listener sets the ones a
notification names. So 1,000 greenlets waiting for results use the pool plus one connection.

Every call makes one attempt (redis-py's retries off, as for the broker); redis-py's errors
become ``StateStoreError`` here and nowhere else. If the listener's connection breaks, it
reconnects every second and, once subscribed again, wakes every watcher so that each reads its
key again (a notification sent meanwhile is not lost, only late).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import gevent
import msgspec
from gevent.event import Event
from redis import BlockingConnectionPool, ConnectionPool, Redis
from redis.exceptions import RedisError

from geboost.brokers.redis_config import RedisSettings, RedisTarget
from geboost.brokers.redis_wire import LuaScript, run_script
from geboost.errors import StateStoreError
from geboost.log import queue_logger
from geboost.state.base import EventWatch
from geboost.state.keys import registry_expiry_key

__all__ = ["RedisStateStore"]

_PATTERN = "geboost:*"
_tokens_encoder = msgspec.json.Encoder()
_tokens_decoder = msgspec.json.Decoder(list[str])
_BATCH_CHUNK = 500  # sets per script call: a long script would block the server meanwhile
# One command for a batch: redis-py packs and parses one command instead of a pipeline of
# SETs and PUBLISHes (measured: the pipeline halved consume-noop with results on), and the
# sets travel as two arguments whatever their number (packing three arguments per set cost
# more than the rest of the write): ARGV[1] holds "key length,value length,ttl ms" for each
# set, ARGV[2] the keys and values concatenated; then channel, tokens pairs to publish. The
# keys are not declared in KEYS, which only Redis Cluster needs (geboost does not support it).
_WRITE_BATCH = """
local joined, pos, n = ARGV[2], 1, 0
local sizes = {}
for size in string.gmatch(ARGV[1], '%d+') do sizes[#sizes + 1] = tonumber(size) end
for i = 1, #sizes, 3 do
  local key = string.sub(joined, pos, pos + sizes[i] - 1)
  pos = pos + sizes[i]
  local value = string.sub(joined, pos, pos + sizes[i + 1] - 1)
  pos = pos + sizes[i + 1]
  if sizes[i + 2] > 0 then
    redis.call('SET', key, value, 'PX', sizes[i + 2])
  else
    redis.call('SET', key, value)
  end
  n = n + 1
end
for j = 3, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[j], ARGV[j + 1])
end
return n
"""
_WRITE_BATCH_SCRIPT = LuaScript(_WRITE_BATCH)
# The fleet rate limit's booking and the registry's pruning: .lua files beside this module.
_BOOK = files(__package__ or "geboost.state").joinpath("redis_book.lua").read_text()
_REGISTRY = files(__package__ or "geboost.state").joinpath("redis_registry.lua").read_text()
_RELISTEN_S = 1.0
_LISTEN_SLICE_S = 1.0  # the listener looks at its closed flag this often


@contextmanager
def _translated(action: str, where: str) -> Iterator[None]:
    """redis-py's exceptions (and socket errors) become ``StateStoreError`` here."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StateStoreError(f"state store {where}: {action} failed: {exc}") from exc


def _px(ttl_s: float) -> int | None:
    return max(1, int(ttl_s * 1000)) if ttl_s > 0 else None


class RedisStateStore:
    """See the module docstring. Building it does not connect."""

    def __init__(self, target: RedisTarget, settings: RedisSettings) -> None:
        self.target = target
        self.settings = settings
        self._pool: BlockingConnectionPool | None = None
        self._client: Redis | None = None
        self._watchers: dict[tuple[str, str], list[Event]] = {}
        self._listener: gevent.Greenlet[Any, None] | None = None
        self._subscribed = Event()
        self._closed = False
        self._scripts: dict[str, Any] = {}
        self._log = queue_logger("-")

    def __repr__(self) -> str:
        return f"RedisStateStore({self.target.display})"

    def _shared(self) -> Redis:
        if self._client is None:
            self._pool = self.target.shared_pool(
                self.settings.pool_max_connections, self.settings.pool_timeout_s
            )
            self._client = Redis(connection_pool=self._pool)
        return self._client

    @contextmanager
    def _guard(self, action: str) -> Iterator[Redis]:
        try:
            with _translated(action, self.target.display):
                yield self._shared()
        except StateStoreError:
            if self._pool is not None:
                self._pool.disconnect(inuse_connections=False)
            raise

    def connection_count(self) -> int:
        """Connections open now: the pool's plus the listener's (for tests and the dashboard)."""
        pooled = len(getattr(self._pool, "_connections", ())) if self._pool is not None else 0
        return pooled + (1 if self._listener is not None and not self._listener.dead else 0)

    # ----------------------------------------------------------------- keys
    def get(self, key: str) -> bytes | None:
        with self._guard(f"get {key!r}") as client:
            value = client.get(key)
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    def set(self, key: str, value: bytes, *, ttl_s: float = 0.0) -> None:
        with self._guard(f"set {key!r}") as client:
            client.set(key, value, px=_px(ttl_s))

    def set_if_absent(self, key: str, value: bytes, *, ttl_s: float = 0.0) -> bool:
        with self._guard(f"set {key!r} if absent") as client:
            return bool(client.set(key, value, px=_px(ttl_s), nx=True))

    def delete(self, key: str) -> bool:
        with self._guard(f"delete {key!r}") as client:
            return bool(client.delete(key))

    def write_batch(
        self, sets: Sequence[tuple[str, bytes, float]], notices: Sequence[tuple[str, str]]
    ) -> None:
        if not sets and not notices:
            return
        # Tokens of one channel travel in one message, a JSON array (the listener splits it).
        by_channel: dict[str, list[str]] = {}
        for channel, token in notices:
            by_channel.setdefault(channel, []).append(token)
        with self._guard(f"write {len(sets)} key(s)") as client:
            # The recorder's hot path: one pooled connection, spoken to directly (see
            # geboost.brokers.redis_wire; redis-py's dispatch around one script call per batch
            # cost as much as the batch).
            pool = client.connection_pool
            conn = pool.get_connection()
            try:
                for start in range(0, max(len(sets), 1), _BATCH_CHUNK):
                    sizes: list[bytes] = []
                    joined: list[bytes] = []
                    for key, value, ttl_s in sets[start : start + _BATCH_CHUNK]:
                        raw_key = key.encode()
                        sizes.append(b"%d,%d,%d" % (len(raw_key), len(value), _px(ttl_s) or 0))
                        joined += (raw_key, value)
                    args = [b",".join(sizes), b"".join(joined)]
                    if start + _BATCH_CHUNK >= len(sets):  # published after the last sets
                        for channel, tokens in by_channel.items():
                            args += [channel.encode(), _tokens_encoder.encode(tokens)]
                    run_script(conn, _WRITE_BATCH_SCRIPT, args)
            finally:
                pool.release(conn)

    def _script(self, client: Redis, source: str) -> Any:
        """``source`` registered once (redis-py's ``Script``: EVALSHA, and the source again
        after ``NOSCRIPT`` from a restarted server)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = client.register_script(source)
        return script

    # ----------------------------------------------------------------- fleet rate limits
    def book_slots(self, key: str, *, interval_s: float, count: int) -> float:
        with self._guard(f"book {count} slot(s) on {key!r}") as client:
            wait_us = self._script(client, _BOOK)(keys=[key], args=[interval_s * 1000, count])
        return int(wait_us) / 1e6

    # ----------------------------------------------------------------- registries
    def put_member(self, registry: str, member: str, info: bytes, *, ttl_s: float) -> None:
        keys = [registry, registry_expiry_key(registry)]
        with self._guard(f"register {member!r} in {registry!r}") as client:
            self._script(client, _REGISTRY)(keys=keys, args=["put", member, info, _px(ttl_s)])

    def remove_member(self, registry: str, member: str) -> bool:
        with self._guard(f"remove {member!r} from {registry!r}") as client:
            pipe = client.pipeline(transaction=True)
            pipe.hdel(registry, member)
            pipe.zrem(registry_expiry_key(registry), member)
            removed, _ = pipe.execute()
        return bool(removed)

    def members(self, registry: str) -> dict[str, bytes]:
        keys = [registry, registry_expiry_key(registry)]
        with self._guard(f"list {registry!r}") as client:
            flat = self._script(client, _REGISTRY)(keys=keys, args=["list"])
        return {_text(flat[i]): _bytes(flat[i + 1]) for i in range(0, len(flat), 2)}

    # ----------------------------------------------------------------- notifications
    @contextmanager
    def watch(self, channel: str, token: str) -> Iterator[EventWatch]:
        if not channel.startswith("geboost:"):
            raise StateStoreError(f"watch: channel {channel!r} is outside geboost:*")
        event = Event()
        events = self._watchers.setdefault((channel, token), [])
        events.append(event)
        try:
            self._ensure_listening()
            yield EventWatch(event)
        finally:
            events.remove(event)
            if not events:
                del self._watchers[(channel, token)]

    def _ensure_listening(self) -> None:
        """Start the listener once; return when it is subscribed (so the caller's read that
        follows cannot miss a notification)."""
        if self._listener is None or self._listener.dead:
            self._listener = gevent.spawn(self._listen)
        wait_s = self.settings.socket_connect_timeout_s + self.settings.socket_timeout_s
        if not self._subscribed.wait(wait_s):
            raise StateStoreError(
                f"state store {self.target.display}: could not subscribe for notifications "
                f"within {wait_s:g} s"
            )

    def _listen(self) -> None:
        while not self._closed:
            pool = ConnectionPool(
                connection_class=self.target.connection_class,
                max_connections=1,
                **{**self.target.connection_kwargs, "health_check_interval": 0},
            )
            pubsub = Redis(connection_pool=pool).pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.psubscribe(_PATTERN)
                while not self._closed:
                    message = pubsub.get_message(timeout=_LISTEN_SLICE_S)
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                self._log.warning(
                    "state store {}: notification connection lost ({}); reconnecting",
                    self.target.display,
                    exc,
                )
                self._wake_all()  # each watcher reads its key again
                gevent.sleep(_RELISTEN_S)
            finally:
                try:
                    pubsub.close()
                    pool.disconnect()
                except (RedisError, OSError):
                    pass

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "psubscribe":
            if not self._subscribed.is_set():
                self._subscribed.set()
                self._wake_all()  # after a reconnect: what was sent meanwhile is read again
            return
        if kind != "pmessage":
            return
        channel = _text(message.get("channel"))
        try:
            tokens = _tokens_decoder.decode(message.get("data") or b"[]")
        except msgspec.DecodeError:
            return  # not ours: someone else publishing under geboost:*
        for token in tokens:
            for event in self._watchers.get((channel, token), ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self._watchers.values():
            for event in events:
                event.set()

    def close(self) -> None:
        """Stop the listener and drop the pool's idle connections (used again if needed)."""
        self._closed = True
        if self._listener is not None:
            self._listener.kill(block=True, timeout=2)
            self._listener = None
        self._subscribed.clear()
        self._closed = False
        if self._pool is not None:
            self._pool.disconnect(inuse_connections=False)


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)

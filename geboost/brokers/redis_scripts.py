"""The Lua scripts of the Redis broker, and the small runner that calls them by SHA.

Each script is one atomic step on the server: that is what lets a message be taken AND recorded
as held by one consumer with no moment in between where a dropped connection could lose it.
Keys and the layout are described in ``geboost.brokers.redis``. Scripts read the server clock
(``TIME``) rather than the caller's, so heartbeats written by machines whose clocks disagree
are still compared on one scale. Needs Redis >= 6.2 (``LMOVE``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

__all__ = ["ACK", "HEARTBEAT", "IN_FLIGHT", "RECOVER", "RELEASE", "REQUEUE", "TAKE", "LuaScript"]

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


class LuaScript:
    """A script sent once per server (EVAL caches it) and then called by its SHA1."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, client: Redis, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted (or different) server has an empty script cache.
            return client.eval(self.source, len(keys), *keys, *args)


TAKE = LuaScript(
    "take",
    # KEYS: queue, held list, consumers zset. ARGV: max count, consumer id.
    # Renews the heartbeat in the same step, so a consumer is registered before it holds anything.
    _NOW_MS
    + """
redis.call('ZADD', KEYS[3], now_ms, ARGV[2])
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local body = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not body then break end
  out[i] = body
end
return out
""",
)

HEARTBEAT = LuaScript(
    "heartbeat",
    # KEYS: consumers zset. ARGV: consumer ids.
    _NOW_MS
    + """
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], now_ms, ARGV[i]) end
return #ARGV
""",
)

ACK = LuaScript(
    "ack",
    # KEYS: held list. ARGV: bodies. Scans from the tail, where the oldest holdings are.
    """
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return removed
""",
)

REQUEUE = LuaScript(
    "requeue",
    # KEYS: queue, held list. ARGV: bodies, ARGV[1] to be taken first. A body no longer held
    # (recovered by another consumer meanwhile) is skipped, so it cannot be doubled.
    """
local moved = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[2], -1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
""",
)

RELEASE = LuaScript(
    "release",
    # KEYS: queue, held list, consumers zset. ARGV: consumer id. Everything held goes back to
    # the taking end of the queue, oldest taken first.
    """
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do moved = moved + 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
return moved
""",
)

RECOVER = LuaScript(
    "recover",
    # KEYS: queue, consumers zset. ARGV: lease ms, forget ms, held-list key prefix.
    # Consumers silent for longer than the lease lose what they hold. Their entry stays (and is
    # swept again on every run) until it is silent for "forget ms": a take that was already in
    # flight when the lease ran out can then still land in their list and be swept back.
    # Returns {consumer id, moved count, ...} for the consumers that held something.
    _NOW_MS
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[1]),
                         'WITHSCORES')
local out = {}
for i = 1, #stale, 2 do
  local held = ARGV[3] .. stale[i]
  local moved = 0
  while redis.call('LMOVE', held, KEYS[1], 'LEFT', 'RIGHT') do moved = moved + 1 end
  if moved > 0 then
    out[#out + 1] = stale[i]
    out[#out + 1] = moved
  end
  if tonumber(stale[i + 1]) < now_ms - tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[2], stale[i])
  end
end
return out
""",
)

IN_FLIGHT = LuaScript(
    "in_flight",
    # KEYS: consumers zset. ARGV: held-list key prefix.
    """
local total = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  total = total + redis.call('LLEN', ARGV[1] .. id)
end
return total
""",
)

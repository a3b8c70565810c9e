"""The Lua scripts of the Redis broker (the ``redis_*.lua`` files beside this module).
``SOURCES`` holds them all; the receiver runs its own (take, ack, requeue, release, heartbeat)
on its connection through ``redis_wire``, and ``RedisScripts`` binds the broker's queue-wide ones
to its shared client with redis-py's own script support (``register_script``: EVALSHA, and the
source again after ``NOSCRIPT`` from a restarted server).

Each script is one atomic step on the server: that is what lets a message be taken AND recorded
as held by one consumer with no moment in between where a dropped connection could lose it.
Keys and the layout are described in ``geboost.brokers.redis``. Scripts read the server clock
(``TIME``) rather than the caller's, so leases written by machines whose clocks disagree are
still compared on one scale. Needs Redis >= 6.2 (``LMOVE``).
"""

from __future__ import annotations

from importlib.resources import files

from redis import Redis
from redis.commands.core import Script

__all__ = ["SOURCES", "RedisScripts"]


def _source(name: str) -> str:
    return files(__package__ or "geboost.brokers").joinpath(f"redis_{name}.lua").read_text()


# Scripts that record a touch of the queue run the lease clock first (it defines ``now_ms``).
_CLOCK = _source("clock")
SOURCES = {
    "take": _CLOCK + _source("take"),
    "heartbeat": _CLOCK + _source("heartbeat"),
    "recover": _CLOCK + _source("recover"),
    "ack": _source("ack"),
    "requeue": _source("requeue"),
    "release": _source("release"),
    "in_flight": _source("in_flight"),
    "push_timed": _source("push_timed"),
}


class RedisScripts:
    """The broker's queue-wide scripts, registered on its shared client (registering does not
    talk to Redis)."""

    __slots__ = ("heartbeat", "in_flight", "push_timed", "recover")

    def __init__(self, client: Redis) -> None:
        self.heartbeat: Script = client.register_script(SOURCES["heartbeat"])
        self.recover: Script = client.register_script(SOURCES["recover"])
        self.in_flight: Script = client.register_script(SOURCES["in_flight"])
        self.push_timed: Script = client.register_script(SOURCES["push_timed"])

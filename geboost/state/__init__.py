"""The state store seam: results, task status, pause flags and dedupe marks (and, later, fleet
rate limits, the worker registry and cron claims) live behind one small protocol,
``StateStore``, with an in-process and a Redis implementation."""

from geboost.state.base import StateStore, Watch, open_state_store
from geboost.state.keys import dedupe_key, done_channel, paused_key, result_key

__all__ = [
    "StateStore",
    "Watch",
    "dedupe_key",
    "done_channel",
    "open_state_store",
    "paused_key",
    "result_key",
]

"""Every key geboost writes in the state store, in one place (the README's key table mirrors
this module). All carry the queue name after ``geboost:``, so that deleting ``geboost:<queue>:*``
removes a queue's state with its bookkeeping."""

from __future__ import annotations

__all__ = [
    "DONE_CHANNEL",
    "dedupe_key",
    "done_channel",
    "paused_key",
    "qps_key",
    "registry_expiry_key",
    "result_key",
    "schedule_last_key",
    "schedule_tick_key",
    "workers_key",
]

DONE_CHANNEL = "geboost:done"
"""The notification channel: finished tasks' result keys are published on it (the Redis store
sends one JSON array of them per batch)."""


def result_key(queue_name: str, task_id: str) -> str:
    """One task's status and outcome; expires after ``result_ttl_s``."""
    return f"geboost:{queue_name}:result:{task_id}"


def dedupe_key(queue_name: str, fingerprint: str) -> str:
    """The id of the task that succeeded with this fingerprint; expires after ``dedupe_ttl_s``."""
    return f"geboost:{queue_name}:dedupe:{fingerprint}"


def paused_key(queue_name: str) -> str:
    """Present while the queue is paused (no TTL: it survives worker restarts)."""
    return f"geboost:{queue_name}:paused"


def qps_key(queue_name: str) -> str:
    """The fleet's next free start time (server clock, ms) for ``qps_scope="queue"``; expires
    one second after the last booked start (an idle queue leaves nothing)."""
    return f"geboost:{queue_name}:qps"


def workers_key(queue_name: str) -> str:
    """The worker registry: a hash of worker id -> ``WorkerInfo`` JSON; expires with its last
    worker's heartbeat, and entries past their heartbeat are pruned on each write and read."""
    return f"geboost:{queue_name}:workers"


def registry_expiry_key(registry_key: str) -> str:
    """Beside a registry hash (Redis store): a sorted set of member -> expiry (server ms)."""
    return f"{registry_key}:expiry"


def done_channel() -> str:
    return DONE_CHANNEL


def schedule_tick_key(queue_name: str, schedule_id: str, tick_ms: int) -> str:
    """The claim of one tick of a periodic schedule (``fired`` or ``skipped``); expires
    ``misfire_grace_s`` + one period + 60 s after it is set."""
    return f"geboost:{queue_name}:schedule:{schedule_id}:tick:{tick_ms}"


def schedule_last_key(queue_name: str, schedule_id: str) -> str:
    """The last tick (epoch ms) a schedule pushed; expires after max(1 day, 2 periods +
    ``misfire_grace_s``)."""
    return f"geboost:{queue_name}:schedule:{schedule_id}:last"

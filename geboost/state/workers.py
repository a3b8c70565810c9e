"""The worker registry: each consuming engine with a state store registers itself under its
queue (``geboost:<queue>:workers``) with a time to live that its pause watcher refreshes; it
leaves on ``stop``, and a worker killed without a goodbye drops out once its entry expires.

Readers (``geboost status``'s consumers column, a dashboard) call ``list_workers`` or
``consumer_count`` with a queue name and a store, or ``Booster.workers()``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import msgspec

from geboost.state.base import StateStore
from geboost.state.keys import workers_key

__all__ = [
    "WORKER_REFRESH_S",
    "WORKER_TTL_S",
    "WorkerInfo",
    "consumer_count",
    "list_workers",
    "new_worker_id",
    "register",
    "unregister",
]

WORKER_TTL_S = 15.0
"""A worker not heard of for this long is gone from the registry."""
WORKER_REFRESH_S = 5.0
"""How often a worker refreshes its entry (a third of the TTL: two refreshes may fail)."""


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One consuming engine, as the registry knows it. Times are Unix seconds (the worker's
    clock)."""

    worker_id: str
    host: str
    pid: int
    queue_name: str
    conn_num: int
    concurrent_num: int
    qps_limit: float = 0.0
    qps_scope: str = "process"
    started_at: float = 0.0
    last_seen: float = 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WorkerInfo)


def new_worker_id() -> str:
    """``host:pid:random``: unique even for two engines of one queue in one process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def register(store: StateStore, info: WorkerInfo, *, ttl_s: float = WORKER_TTL_S) -> None:
    """Add or refresh ``info`` (its ``last_seen`` set to now). Raises ``StateStoreError``."""
    seen = msgspec.structs.replace(info, last_seen=time.time())
    store.put_member(
        workers_key(info.queue_name), info.worker_id, _encoder.encode(seen), ttl_s=ttl_s
    )


def unregister(store: StateStore, queue_name: str, worker_id: str) -> bool:
    """Remove a worker's entry; True if it was there. Raises ``StateStoreError``."""
    return store.remove_member(workers_key(queue_name), worker_id)


def list_workers(store: StateStore, queue_name: str) -> list[WorkerInfo]:
    """The workers consuming ``queue_name`` now, oldest first. Raises ``StateStoreError``."""
    found: list[WorkerInfo] = []
    for raw in store.members(workers_key(queue_name)).values():
        try:
            found.append(_decoder.decode(raw))
        except msgspec.DecodeError:
            continue  # written by something else: not a worker we can describe
    return sorted(found, key=lambda w: (w.started_at, w.worker_id))


def consumer_count(store: StateStore, queue_name: str) -> int:
    """How many workers consume ``queue_name`` now. Raises ``StateStoreError``."""
    return len(list_workers(store, queue_name))

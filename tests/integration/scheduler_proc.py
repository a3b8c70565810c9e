"""A scheduler process for the periodic-task tests: runs ``Scheduler`` over one Redis booster
with an every-second schedule until SIGTERM; it consumes nothing, so the test reads every
pushed tick from the queue.

    python -m tests.integration.scheduler_proc CONFIG_JSON

CONFIG_JSON keys: ``queue``, ``url`` (Redis, broker and state store). Prints ``started`` once
its scheduler runs.
"""

from __future__ import annotations

import geboost  # noqa: F401  isort: skip  (patches with gevent first)

import json
import signal
import sys

import gevent
from gevent.event import Event

from geboost import BoostOptions, BrokerConfig, BrokerKind, Scheduler, new_booster


def tick(n: int) -> int:
    return n


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    booster = new_booster(
        BoostOptions(
            queue_name=config["queue"],
            consume_func=tick,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=config["url"]),
            handle_signals=False,
        )
    )
    booster.every(1, 1)
    stopping = Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    with Scheduler([booster]):
        print("started", flush=True)
        stopping.wait()
    booster.stop(timeout_s=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

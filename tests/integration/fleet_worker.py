"""A worker process for the fleet tests: consumes one Redis queue until SIGTERM.

    python -m tests.integration.fleet_worker CONFIG_JSON

CONFIG_JSON keys: ``queue``, ``url`` (the Redis broker, also the state store), ``qps_limit``,
``starts_key`` (a Redis list: each call pushes ``"<pid> <time.time() at its start>"``), and
optionally ``worker_ttl_s`` / ``worker_refresh_s`` (the registry's, shortened for tests).
"""

from __future__ import annotations

import geboost  # noqa: F401  isort: skip  (patches with gevent first)

import json
import os
import sys
import time

import redis

from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster
from geboost.state import workers


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    client = redis.Redis.from_url(config["url"])
    starts_key = config["starts_key"]
    pid = os.getpid()

    def tick(n: int) -> None:
        started = time.time()
        client.rpush(starts_key, f"{pid} {started:.6f}")

    workers.WORKER_TTL_S = float(config.get("worker_ttl_s", workers.WORKER_TTL_S))
    workers.WORKER_REFRESH_S = float(config.get("worker_refresh_s", workers.WORKER_REFRESH_S))
    booster = new_booster(
        BoostOptions(
            queue_name=config["queue"],
            consume_func=tick,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(broker_url=config["url"]),
            qps_limit=float(config["qps_limit"]),
            qps_scope="queue",
            poll_timeout_s=0.2,
        )
    )
    booster.consume()  # handle_signals: SIGTERM stops it gracefully
    booster.join()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A worker process for the state tests: consumes one queue until SIGTERM.

    python -m tests.integration.state_worker CONFIG_JSON

CONFIG_JSON keys: ``queue``, ``kind`` (memory is meaningless here: redis or rabbitmq),
``url`` (broker), ``state_url``. The task ``echo(x: int) -> int`` returns ``x``; results are
stored for 60 s, so the test process reads them through ``AsyncResult``.
"""

from __future__ import annotations

import geboost  # noqa: F401  isort: skip  (patches with gevent first)

import json
import sys

from geboost import BoostOptions, BrokerConfig, new_booster


def echo(x: int) -> int:
    return x


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    booster = new_booster(
        BoostOptions(
            queue_name=config["queue"],
            consume_func=echo,
            broker_kind=config["kind"],
            broker_config=BrokerConfig(broker_url=config["url"]),
            state_url=config["state_url"],
            result_ttl_s=60,
            poll_timeout_s=0.2,
        )
    )
    booster.consume()  # handle_signals: SIGTERM stops it gracefully
    booster.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

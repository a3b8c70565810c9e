"""A worker process for the Redis fault tests: consumes until SIGTERM (or until killed).

    python -m tests.faults.redis_worker CONFIG_JSON

CONFIG_JSON keys: ``queue``, ``url``, ``record`` (file), ``concurrent_num``, ``conn_num``,
``reconnect_interval_s``, ``transport`` (Redis transport options). Each call is
``task(i, sleep_s)``: it appends ``start <i> <pid>``, sleeps cooperatively, then appends
``done <i> <pid>``; the message is acked only after that, so a task without a ``done`` line
never ran to completion. Each line is one small O_APPEND write, so lines never interleave.
"""

from __future__ import annotations

import geboost  # noqa: F401  isort: skip  (patches with gevent first)

import json
import os
import sys

import gevent

from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    fd = os.open(config["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def task(i: int, sleep_s: float) -> None:
        os.write(fd, f"start {i} {pid}\n".encode())
        gevent.sleep(sleep_s)
        os.write(fd, f"done {i} {pid}\n".encode())

    booster = new_booster(
        BoostOptions(
            queue_name=config["queue"],
            consume_func=task,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(
                broker_url=config["url"], broker_transport_options=config["transport"]
            ),
            conn_num=config.get("conn_num", 2),
            concurrent_num=config["concurrent_num"],
            reconnect_interval_s=config.get("reconnect_interval_s", 1.0),
            handle_signals=True,
        )
    )
    booster.consume()
    print("worker consuming", flush=True)
    booster.join()  # until SIGTERM stops it
    os.close(fd)
    print("worker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

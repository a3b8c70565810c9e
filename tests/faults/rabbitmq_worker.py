"""A worker process for the RabbitMQ fault tests: consumes until SIGTERM (or until killed).

    python -m tests.faults.rabbitmq_worker QUEUE URL RECORD_FILE CONCURRENT_NUM SLEEP_S \
        [RECONNECT_INTERVAL_S] [HEARTBEAT_S]

Each call sleeps cooperatively, then appends its argument (the task number) as one line to
RECORD_FILE; the message is acked only after that, so a task whose line is missing never ran
to completion. One connection with ``prefetch_count = concurrent_num`` keeps the pool full.
"""

from __future__ import annotations

import geboost  # noqa: F401  isort: skip  (patches with gevent first)

import os
import sys

import gevent

from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster


def main(argv: list[str]) -> int:
    queue, url, record_file, concurrent, sleep_s = argv[:5]
    reconnect_interval_s = float(argv[5]) if len(argv) > 5 else 1.0
    heartbeat_s = int(argv[6]) if len(argv) > 6 else 60
    fd = os.open(record_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pause_s = float(sleep_s)

    def record(i: int) -> None:
        gevent.sleep(pause_s)
        os.write(fd, f"{i}\n".encode())  # one small O_APPEND write: whole lines only

    booster = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=record,
            broker_kind=BrokerKind.RABBITMQ,
            broker_config=BrokerConfig(
                broker_url=url,
                broker_transport_options={
                    "prefetch_count": int(concurrent),
                    "heartbeat_s": heartbeat_s,
                    "connect_timeout_s": 2.0,
                },
            ),
            conn_num=1,
            concurrent_num=int(concurrent),
            reconnect_interval_s=reconnect_interval_s,
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

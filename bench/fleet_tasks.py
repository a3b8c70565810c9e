"""The booster of the fleet rows, imported by ``geboost worker bench/fleet_tasks.py``.

``bench/run.py`` passes the run's spec in ``GEBOOST_BENCH_FLEET`` (JSON). Each worker process
records which task indexes it ran and when its first call started and its last one ended (wall
clock: the processes are on one machine), and writes them to ``<out_dir>/<pid>.json`` when it
exits after SIGTERM; the caller merges the files.
"""

from __future__ import annotations

# isort: off
import geboost  # noqa: F401  (first: patches the standard library, as a worker would)
# isort: on

import atexit
import json
import os
import time
from pathlib import Path

import gevent

from geboost import BoostOptions, BrokerConfig, new_booster

SPEC = json.loads(os.environ["GEBOOST_BENCH_FLEET"])
SLEEP_S = float(SPEC.get("sleep_s", 0))
ran: list[int] = []
times = {"first_start": 0.0, "last_end": 0.0}


def task(i: int) -> None:
    if not times["first_start"]:
        times["first_start"] = time.time()
    if SLEEP_S:
        gevent.sleep(SLEEP_S)
    ran.append(i)
    times["last_end"] = time.time()


fleet_booster = new_booster(
    BoostOptions(
        queue_name=SPEC["queue"],
        consume_func=task,
        broker_kind=SPEC["broker"],
        concurrent_num=SPEC["concurrent"],
        max_retries=0,
        broker_config=BrokerConfig(broker_url=SPEC.get("broker_url", "")),
    )
)


def progress() -> None:
    """How many calls ran, rewritten every 0.1 s: the caller waits on the sum."""
    path = Path(SPEC["out_dir"]) / f"{os.getpid()}.count"
    while True:
        path.write_text(str(len(ran)))
        gevent.sleep(0.1)


gevent.spawn(progress)


@atexit.register
def report() -> None:
    out = Path(SPEC["out_dir"]) / f"{os.getpid()}.json"
    out.write_text(json.dumps({"ran": ran, **times}))

"""Delayed tasks, measured (issue 12): started by ``bench/run.py``, one process per row.

    python bench/delayed.py '<json spec>'

Modes (``spec["mode"]``):
- ``accuracy``: a consuming booster (pool of 50); ``n`` tasks pushed with ``eta`` spread over
  the same second, about 3 s ahead; each call records how late it started after its due time.
  RESULT: median and p99 lateness in ms.
- ``rss``: a consuming booster on an empty queue; its resident set (``VmRSS``, not the peak) is
  read idle, then a child process pushes ``n`` tasks due in an hour, and it is read again once
  they all wait (the worker polled the queue meanwhile). RESULT: both, in MB.
- ``push-delayed`` (the child): ``n`` ``push_with(PushOptions(countdown_s=3600))``.
Prints one ``RESULT {...}`` line, like ``bench/worker.py``.
"""

from __future__ import annotations

# isort: off
import geboost  # noqa: F401  (first: patches the standard library, as a worker would)
# isort: on

import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import gevent

from geboost import BoostOptions, BrokerConfig, PushOptions, new_booster
from geboost.booster import Booster


def _noop(i: int) -> None:
    pass


def _booster(spec: dict[str, Any], func: Any, **kw: Any) -> Booster[Any, Any]:
    return new_booster(
        BoostOptions(
            queue_name=spec["queue"],
            consume_func=func,
            broker_kind=spec["broker"],
            broker_config=BrokerConfig(broker_url=spec["broker_url"]),
            handle_signals=False,
            log_level="WARNING",
            **kw,
        )
    )


def _forget(b: Booster[Any, Any], delays_s: list[float]) -> None:
    b.purge()
    names = getattr(b.broker, "delay_queue_names", None)
    if names is not None:
        for name in names(b.queue_name, delays_s):
            b.broker.delete_queue(name)  # type: ignore[attr-defined]


def accuracy(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    due: dict[int, float] = {}
    late_ms: list[float] = []

    def task(i: int) -> None:
        late_ms.append((time.time() - due[i]) * 1000)

    b = _booster(spec, task, concurrent_num=50)
    b.consume()
    lead_s = spec.get("lead_s", 3.0)
    start = time.time() + lead_s
    for i in range(n):
        due[i] = start + i / n
        b.push_with(PushOptions(eta=datetime.fromtimestamp(due[i], timezone.utc)), i)
    pushed_s = time.time() - (start - lead_s)
    deadline = time.monotonic() + 60
    while len(late_ms) < n and time.monotonic() < deadline:
        gevent.sleep(0.05)
    b.stop(timeout_s=5)
    _forget(b, [lead_s, lead_s + 1])
    ok = len(late_ms) == n and pushed_s < lead_s
    ordered = sorted(late_ms)
    return {
        "ok": ok,
        "ran": len(late_ms),
        "push_s": pushed_s,
        "median_ms": statistics.median(ordered) if ordered else None,
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] if ordered else None,
        "early": sum(1 for x in ordered if x < -1),
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss(spec: dict[str, Any]) -> dict[str, Any]:
    b = _booster(spec, _noop)
    b.consume()
    settle_s = spec.get("settle_s", 3.0)
    gevent.sleep(settle_s)
    idle_mb = _rss_mb()
    child = subprocess.run(
        [sys.executable, __file__, json.dumps({**spec, "mode": "push-delayed"})],
        capture_output=True,
        timeout=600,
    )
    pushed = child.returncode == 0
    gevent.sleep(settle_s)  # the worker keeps polling the queue while they wait
    waiting = b.message_count()
    loaded_mb = _rss_mb()
    b.stop(timeout_s=5)
    _forget(b, [3600.0])
    return {
        "ok": pushed and (waiting == spec["n"] or spec["broker"] == "rabbitmq"),
        "waiting": waiting,
        "idle_mb": idle_mb,
        "loaded_mb": loaded_mb,
        "delta_mb": loaded_mb - idle_mb,
        "child": child.stderr.decode()[-500:] if not pushed else "",
    }


def push_delayed(spec: dict[str, Any]) -> dict[str, Any]:
    b = _booster(spec, _noop)
    opts = PushOptions(countdown_s=3600)
    for i in range(spec["n"]):
        b.push_with(opts, i)
    b.stop()
    return {"ok": True}


def main() -> None:
    spec = json.loads(sys.argv[1])
    modes = {"accuracy": accuracy, "rss": rss, "push-delayed": push_delayed}
    result = modes[spec["mode"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""geboost's benchmark: one command, one table, measured against the machine's own ceiling.

    python bench/run.py [--quick] [--brokers memory,redis,rabbitmq] [--json bench/results.json]

Every measurement runs in its own process (``bench/worker.py`` for geboost and the bare Pool,
``bench/ceiling.py`` for plain redis-py and pika), started and always stopped by PID. Consumers
are separate from the publisher; for the memory broker, which lives in-process, the consumer
pushes its own tasks before it starts (untimed). Each run checks that exactly the expected set
of task indexes ran, none failed and every one was acknowledged; otherwise its row says FAILED.
Ratios to the ceiling, not absolute figures, are what to compare across runs and machines.

Columns: "vs ceiling" is geboost's rate divided by the ceiling's (fan-outs: the bare Pool's time
divided by geboost's); "RSS MB" is the process's peak resident set (``ru_maxrss``); "conns" is
the established TCP connections from the worker to the broker's port, its own sockets matched in
``/proc`` (the larger of a sample at the first call and one at the last ack).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BROKERS = ("memory", "redis", "rabbitmq")
PUBLISH_REPEATS = 3
BROKER_URLS = {"memory": "", "redis": "127.0.0.1:6379", "rabbitmq": "127.0.0.1:5672"}


@dataclass(frozen=True)
class Sizes:
    publish_n: int = 20_000
    noop_n: int = 20_000
    noop_concurrent: int = 50
    fanout_n: int = 5_000
    fanout_concurrent: int = 500
    fanout_sleep_s: float = 0.1
    big_n: int = 50_000
    big_concurrent: int = 10_000
    big_sleep_s: float = 1.0
    http_n: int = 10_000
    http_concurrent: int = 1_000
    http_delay_s: float = 0.1
    qps_n: int = 2_000
    qps_limit: float = 200.0
    rpc_n: int = 1_000
    fleet_noop_n: int = 100_000
    fleet_fanout_n: int = 20_000
    delay_n: int = 1_000
    delay_rss_n: int = 100_000
    delay_settle_s: float = 3.0
    # The consume-noop family (and the bare Pool it is compared with) runs this many times and
    # keeps the fastest: a run lasts well under a second, and on these shared 2-core machines
    # one run of the same code read anywhere from 38k/s to 62k/s. Rows compared with each
    # other are all treated alike.
    consume_repeats: int = 3
    pairs: int = 5  # alternated memory / Redis consume-noop runs (consume_pairs)
    fleet_pairs: int = 3  # alternated 1-process / 2-process consume-noop runs (fleet)


QUICK = Sizes(
    consume_repeats=1,
    pairs=1,
    fleet_pairs=1,
    publish_n=300,
    noop_n=300,
    fanout_n=200,
    fanout_concurrent=100,
    big_n=1_000,
    big_concurrent=500,
    big_sleep_s=0.2,
    http_n=200,
    http_concurrent=100,
    qps_n=40,
    qps_limit=100.0,
    rpc_n=50,
    fleet_noop_n=300,
    fleet_fanout_n=200,
    delay_n=100,
    delay_rss_n=1_000,
    delay_settle_s=1.0,
)


@dataclass
class Row:
    """One line of the table. ``value`` None means FAILED or n/a (said in ``shown``)."""

    broker: str
    measure: str
    shown: str
    value: float | None = None
    unit: str = ""
    vs_ceiling: str = ""
    target: str = ""
    verdict: str = ""
    rss_mb: float | None = None
    connections: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------- processes
class RunFailed(Exception):
    pass


LOG_DIR = Path(tempfile.gettempdir()) / f"geboost-bench-{os.getpid()}"
_runs = iter(range(1, 1_000_000))


def run_process(script: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``script spec`` and return its ``RESULT`` line; the process never outlives this.

    Its stderr (geboost's log) is kept in ``LOG_DIR``; a failure names its last warning.
    """
    LOG_DIR.mkdir(exist_ok=True)
    log_path = LOG_DIR / f"{next(_runs):03d}-{spec.get('broker', '')}-{spec['mode']}.log"
    with log_path.open("w+b") as stderr:
        stderr.write((json.dumps(spec) + "\n").encode())
        stderr.flush()
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / script), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"timed out after {timeout_s:.0f} s, log {log_path}") from None
        finally:
            if proc.poll() is None:
                proc.kill()  # by PID: only the process we started
                proc.wait()
        for line in out.decode().splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[7:])
                if result.get("ok") is False:
                    result["log"] = str(log_path)
                    result["warnings"] = warnings_in(log_path)
                return result
        raise RunFailed(f"exit {proc.returncode}: {' | '.join(warnings_in(log_path))}")


def warnings_in(log_path: Path, keep: int = 3) -> list[str]:
    """The last WARNING / ERROR / Traceback lines of a process's log."""
    lines = log_path.read_text(errors="replace").splitlines()
    marked = [line for line in lines if "WARNING" in line or "ERROR" in line or "Error" in line]
    return [line[-200:] for line in (marked or lines)[-keep:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def http_server(delay_s: float) -> Iterator[str]:
    """The 100 ms HTTP server in its own process; yields its base URL, stops it by PID."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "http_server.py"), str(port), str(delay_s)]
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the HTTP server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------- formatting
def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def failed(result: dict[str, Any]) -> str:
    parts = [f"{k} {result[k]}" for k in ("missing", "failed", "duplicates") if result.get(k)]
    if "acked" in result and result.get("calls", 0) and result["acked"] < result["calls"]:
        parts.append(f"acked {result['acked']}/{result['calls']}")
    return "FAILED (" + (", ".join(parts) or "see detail") + ")"


def best(kept: dict[str, Any] | None, new: dict[str, Any], key: str) -> dict[str, Any]:
    """Of two runs of the same measurement, the one with the higher ``key``; a failure wins."""
    if kept is None or not new["ok"]:
        return new
    if not kept["ok"]:
        return kept
    return new if new[key] > kept[key] else kept


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --------------------------------------------------------------------- the runs
@dataclass(frozen=True)
class Fanout:
    key: str
    task: str  # "sleep", "http" (urllib) or "http-fast" (geventhttpclient)
    n: int
    concurrent: int
    task_s: float
    target: str

    @property
    def ideal_s(self) -> float:
        return math.ceil(self.n / self.concurrent) * self.task_s

    @property
    def label(self) -> str:
        what = "GETs of" if self.task.startswith("http") else "x"
        kind = {"http": "http-fanout", "http-fast": "http-fanout (geventhttpclient)"}.get(
            self.task, "io-fanout"
        )
        return f"{kind}: {self.n:,} {what} {self.task_s:g} s @{self.concurrent:,}"


def fanouts(s: Sizes) -> list[Fanout]:
    return [
        Fanout("sleep", "sleep", s.fanout_n, s.fanout_concurrent, s.fanout_sleep_s, "eff >= 0.9"),
        Fanout(
            "sleep-big", "sleep", s.big_n, s.big_concurrent, s.big_sleep_s, "eff >= 0.9, RSS < 400"
        ),
        Fanout("http", "http", s.http_n, s.http_concurrent, s.http_delay_s, ""),
        Fanout("http-fast", "http-fast", s.http_n, s.http_concurrent, s.http_delay_s, ""),
    ]


def fast_http_missing() -> str:
    """Why the geventhttpclient rows cannot run here ("" if they can)."""
    if importlib.util.find_spec("geventhttpclient") is None:
        return "n/a: geventhttpclient is not installed (pip install 'geboost[fast-http]')"
    return ""


# Which plain-client figure each geboost figure is divided by.
CEILING_OF = {
    ("redis", "push"): "lpush",
    ("redis", "push_many"): "lpush_variadic",
    ("redis", "consume"): "lmove_lrem_pipelined",
    ("rabbitmq", "push"): "publish_confirmed",
    ("rabbitmq", "push_many"): "publish_batch_confirmed",
    ("rabbitmq", "consume"): "consume_prefetch",
    ("memory", "consume"): "pool_noop",
}
CEILING_NAMES = {
    "lpush": "LPUSH one by one",
    "lpush_variadic": "LPUSH variadic x1000",
    "lpush_pipelined": "LPUSH pipelined x1000",
    "lmove_lrem": "LMOVE + LREM one by one",
    "lmove_lrem_pipelined": "LMOVE + LREM pipelined x100",
    "publish_confirmed": "pika publish, confirm each",
    "publish_batch_confirmed": "pika publish, confirm per 1000",
    "consume_prefetch": "pika consume, prefetch 100, ack each",
}


class Bench:
    """Runs the measurements and collects the rows; remembers the queues to delete."""

    def __init__(self, sizes: Sizes, run_id: str, http_url: str) -> None:
        self.sizes = sizes
        self.run_id = run_id
        self.http_url = http_url
        self.rows: list[Row] = []
        self.queues: list[str] = []
        self.pool: dict[str, dict[str, Any]] = {}  # bare-Pool ceilings, by scenario key
        self.noop_rate: dict[str, float | None] = {}  # consume-noop, what consume-typed is to
        self.only: set[str] = set()  # --only: the steps to run (empty: all)

    def queue(self, broker: str, name: str) -> str:
        queue = f"{self.run_id}-{broker}-{name}"
        self.queues += [queue, queue + ".dlq"]
        return queue

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        clock = time.strftime("%H:%M:%S")
        print(f"{clock} {row.broker:<9} {row.measure:<40} {row.shown}", file=sys.stderr, flush=True)
        return row

    def spec(self, broker: str, **more: Any) -> dict[str, Any]:
        return {"broker": broker, "broker_url": BROKER_URLS[broker], "url": self.http_url, **more}

    def consume(
        self, broker: str, name: str, ideal_s: float, repeats: int = 1, **spec: Any
    ) -> dict[str, Any]:
        """Fill the queue (network brokers: from another process), then drain it in a worker;
        ``repeats`` times, keeping the fastest run (any failed run is returned instead)."""
        spec = self.spec(broker, queue=self.queue(broker, name), **spec)
        timeout_s = 60 + 4 * ideal_s
        kept: dict[str, Any] | None = None
        for attempt in range(repeats):
            # "prefilled": publish() left the tasks for the first run; later runs fill again.
            if broker != "memory" and not (spec.get("prefilled") and attempt == 0):
                filled = run_process("worker.py", {**spec, "mode": "fill"}, timeout_s)
                if not filled["ok"]:
                    raise RunFailed(
                        f"push_many of {spec['n']} queued {filled['queued']}: "
                        + " | ".join(filled["warnings"])
                    )
            run = {**spec, "mode": "consume", "prefill": broker == "memory", "timeout_s": timeout_s}
            kept = best(kept, run_process("worker.py", run, timeout_s + 30), "rate_per_s")
        assert kept is not None
        return kept

    def rate_row(self, broker: str, measure: str, result: dict[str, Any], key: str) -> Row:
        value = result[key] if result["ok"] else None
        shown = rate(value) if value is not None else failed(result)
        if value is not None and key == "rate_per_s" and result.get("calls_done_s"):
            shown += f" [calls: {rate(result['acked'] / result['calls_done_s'])}]"
        if value is not None and result.get("duplicates"):
            shown += f" ({result['duplicates']} ran twice)"
        return Row(
            broker,
            measure,
            shown,
            value,
            "tasks/s",
            rss_mb=result.get("peak_rss_mb"),
            connections=result.get("connections"),
            detail=result,
        )

    # ----------------------------------------------------------------- ceilings
    def pool_ceilings(self) -> None:
        """The bare ``Pool(concurrent).spawn`` loop of the same calls, broker-independent."""
        s = self.sizes
        spec = self.spec(
            "memory", mode="pool", task="noop", n=s.noop_n, concurrent=s.noop_concurrent
        )
        result: dict[str, Any] | None = None
        for _ in range(s.consume_repeats):
            result = best(result, run_process("worker.py", spec, 120), "rate_per_s")
        assert result is not None
        self.pool["pool_noop"] = result
        measure = f"ceiling: Pool({s.noop_concurrent}).spawn, {s.noop_n:,} no-op"
        self.add(self.rate_row("gevent", measure, result, "rate_per_s"))
        for fan in self.runnable(fanouts(s)):
            spec = self.spec(
                "memory",
                mode="pool",
                task=fan.task,
                n=fan.n,
                concurrent=fan.concurrent,
                sleep_s=fan.task_s,
            )
            result = self.pool[fan.key] = run_process("worker.py", spec, 60 + 4 * fan.ideal_s)
            self.add(self.fanout_row("gevent", "ceiling: bare Pool, " + fan.label, result, fan))

    def runnable(self, fans: list[Fanout], broker: str = "gevent") -> list[Fanout]:
        """The fan-outs this machine can run (and this run asked for); a row says why not."""
        keep = []
        for fan in fans:
            why = fast_http_missing() if fan.task == "http-fast" else ""
            if why:
                if self.wanted(fan.label) or broker == "gevent":
                    self.add(Row(broker, fan.label, why))
            else:
                keep.append(fan)
        return keep

    def client_ceilings(self, broker: str) -> dict[str, Any]:
        """Plain redis-py or pika loops moving the same messages, on the same broker."""
        spec = self.spec(broker, mode=broker, queue=self.queue(broker, "ceiling"))
        return run_process("ceiling.py", {**spec, "n": self.sizes.publish_n}, 300)

    # ----------------------------------------------------------------- geboost
    def publish(self, broker: str, ceiling: dict[str, Any]) -> None:
        """The client ceilings and geboost's publishing, alternated; the best of each is kept.

        Single pushes are one round trip each, so the neighbours' load moves them most: the
        pair is repeated (except on RabbitMQ, where one confirmed push at a time takes long).
        """
        n = self.sizes.publish_n
        spec = self.spec(
            broker,
            mode="publish",
            queue=self.queue(broker, "noop"),  # its push_many leaves n tasks for consume_noop
            task="noop",
            n=n,
            concurrent=self.sizes.noop_concurrent,
        )
        runs = []
        for _ in range(1 if broker == "rabbitmq" else PUBLISH_REPEATS):
            if broker != "memory":
                for key, figures in self.client_ceilings(broker).items():
                    if key in CEILING_NAMES:
                        ceiling[key] = best(ceiling.get(key), figures, "rate_per_s")
            runs.append(run_process("worker.py", spec, 300))
        result = {**runs[-1], "ok": all(run["ok"] for run in runs), "runs": len(runs)}
        for key in ("push_per_s", "push_many_per_s"):
            result[key] = max(run[key] for run in runs)
        for key, figures in ceiling.items():
            self.add(self.rate_row(broker, "ceiling: " + CEILING_NAMES[key], figures, "rate_per_s"))
        for call, key in (("push", "push_per_s"), ("push_many", "push_many_per_s")):
            row = self.rate_row(broker, f"publish: {n:,} x {call}()", result, key)
            ratio = self.ratio(row, ceiling.get(CEILING_OF.get((broker, call), "")))
            if broker == "redis" and row.value is not None:
                if call == "push":
                    row.target = ">= 0.80 of LPUSH"
                    row.verdict = verdict(ratio is not None and ratio >= 0.8)
                else:
                    row.target = ">= 100,000/s"
                    row.verdict = verdict(row.value >= 100_000)
            self.add(row)

    def consume_noop(self, broker: str, ceiling: dict[str, Any]) -> None:
        s = self.sizes
        result = self.consume(
            broker,
            "noop",
            1.0,
            s.consume_repeats,
            task="noop",
            n=s.noop_n,
            concurrent=s.noop_concurrent,
            prefilled=True,  # by publish(), for the network brokers
        )
        measure = f"consume-noop: {s.noop_n:,} @{s.noop_concurrent}, acks"
        row = self.rate_row(broker, measure, result, "rate_per_s")
        self.noop_rate[broker] = row.value
        ratio = self.ratio(row, {**ceiling, **self.pool}.get(CEILING_OF[(broker, "consume")]))
        if row.value is not None:
            if broker == "memory":
                row.target = ">= 0.65 of bare Pool"
                row.verdict = verdict(ratio is not None and ratio >= 0.65)
            elif broker == "redis":
                row.target, row.verdict = ">= 15,000/s", verdict(row.value >= 15_000)
            else:
                row.target = ">= 5,000/s, >= 0.80 of pika"
                row.verdict = verdict(row.value >= 5_000 and ratio is not None and ratio >= 0.8)
        self.add(row)

    def consume_pairs(self, broker: str) -> None:
        """Issue 9's ratio, robust to the machine's slow phases (which last longer than a
        best-of-3): consume-noop on memory, then at once on ``broker``, ``pairs`` times; the
        median of the pairs' ratios. Both sides of a pair see the same phase."""
        s = self.sizes
        ratios: list[float] = []
        rates: list[tuple[float, float]] = []  # (memory, broker) per pair, for the JSON
        for _ in range(s.pairs):
            # Longer runs than consume-noop's: a short hiccup weighs less.
            size = {"task": "noop", "n": s.fleet_noop_n, "concurrent": s.noop_concurrent}
            runs = [self.consume(kind, "pair", 1.0, **size) for kind in ("memory", broker)]
            if not all(run["ok"] for run in runs):
                bad = next(run for run in runs if not run["ok"])
                self.add(Row(broker, "consume-noop / memory, alternated", failed(bad), detail=bad))
                return
            ratios.append(runs[1]["rate_per_s"] / runs[0]["rate_per_s"])
            rates.append((runs[0]["rate_per_s"], runs[1]["rate_per_s"]))
        median = statistics.median(ratios)
        measure = f"consume-noop / memory, {s.fleet_noop_n:,} @{s.noop_concurrent}, {s.pairs} pairs"
        shown = f"median {median:.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f})"
        row = Row(broker, measure, shown, median, "ratio", detail={"rates_per_s": rates})
        row.target, row.verdict = ">= 0.75 of memory", verdict(median >= 0.75)
        self.add(row)

    def consume_typed(self, broker: str) -> None:
        """consume-noop again, each call taking a datetime, a Decimal and a list[int] that the
        consumer converts from JSON (issue 9): the cost of typed arguments."""
        s = self.sizes
        result = self.consume(
            broker,
            "typed",
            1.0,
            s.consume_repeats,
            task="typed",
            n=s.noop_n,
            concurrent=s.noop_concurrent,
        )
        measure = f"consume-typed: {s.noop_n:,} @{s.noop_concurrent}, datetime+Decimal+list"
        row = self.rate_row(broker, measure, result, "rate_per_s")
        noop = self.noop_rate.get(broker)
        if row.value is not None and noop:
            ratio = row.value / noop
            row.vs_ceiling = f"{ratio:.2f}"
            row.target, row.verdict = ">= 0.80 of consume-noop", verdict(ratio >= 0.8)
        self.add(row)

    def ratio(self, row: Row, ceiling: dict[str, Any] | None) -> float | None:
        if row.value is None or not ceiling or not ceiling["ok"]:
            return None
        ratio: float = row.value / ceiling["rate_per_s"]
        row.vs_ceiling = f"{ratio:.2f}"
        return ratio

    def fanout_row(self, broker: str, measure: str, result: dict[str, Any], fan: Fanout) -> Row:
        if not result["ok"]:
            return Row(broker, measure, failed(result), detail=result)
        elapsed_s = result["elapsed_s"]
        efficiency = fan.ideal_s / elapsed_s
        return Row(
            broker,
            measure,
            f"{elapsed_s:.2f} s, eff {efficiency:.2f}"
            + (f" [calls: {result['calls_done_s']:.2f} s]" if "calls_done_s" in result else "")
            + (f" ({result['duplicates']} ran twice)" if result.get("duplicates") else ""),
            elapsed_s,
            "s",
            rss_mb=result["peak_rss_mb"],
            connections=result.get("connections"),
            detail={**result, "ideal_s": fan.ideal_s, "efficiency": efficiency},
        )

    def fanout(self, broker: str, fan: Fanout) -> None:
        result = self.consume(
            broker,
            fan.key,
            fan.ideal_s,
            task=fan.task,
            n=fan.n,
            concurrent=fan.concurrent,
            sleep_s=fan.task_s,
        )
        row = self.fanout_row(broker, fan.label, result, fan)
        pool = self.pool.get(fan.key)
        if row.value is not None:
            if pool and pool["ok"]:
                row.vs_ceiling = f"{pool['elapsed_s'] / row.value:.2f}"
            row.target = fan.target
            if fan.target:
                ok = row.detail["efficiency"] >= 0.9
                if fan.key == "sleep-big":
                    ok = ok and result["peak_rss_mb"] < 400
                row.verdict = verdict(ok)
        self.add(row)

    # ----------------------------------------------------------------- fleet
    def fleet(self, broker: str) -> None:
        """consume-noop and io-fanout through ``geboost worker --processes 1`` then ``2``, in the
        same run: the ratio is what multi-process scaling buys on this machine."""
        s = self.sizes
        cases = [
            ("noop", s.fleet_noop_n, s.noop_concurrent, 0.0),
            ("sleep", s.fleet_fanout_n, s.fanout_concurrent, s.fanout_sleep_s),
        ]
        for task, n, concurrent, sleep_s in cases:
            what = (
                f"consume-noop: {n:,} @{concurrent}"
                if task == "noop"
                else f"io-fanout: {n:,} x {sleep_s:g} s @{concurrent}"
            )
            # consume-noop is CPU-bound and the machine's slow phases move it most: several
            # alternated pairs (1 process, then 2), judged on the median of their ratios.
            ratios: list[float] = []
            for _ in range(s.fleet_pairs if task == "noop" else 1):
                one: Row | None = None
                for processes in (1, 2):
                    measure = f"{what}, {processes} process{'es' if processes > 1 else ''}"
                    try:
                        result = self.fleet_run(broker, task, n, concurrent, processes, sleep_s)
                    except RunFailed as exc:
                        self.add(Row(broker, measure, f"FAILED ({exc})"))
                        return
                    row = self.fleet_row(broker, measure, result, one, task == "noop")
                    self.add(row)
                    if row.value is None:
                        return
                    if one is not None and one.value:
                        ratios.append(row.value / one.value)
                    one = one or row
            if task == "noop" and ratios:
                median = statistics.median(ratios)
                summary = Row(
                    broker,
                    f"{what}, 2 processes / 1, {len(ratios)} alternated pairs",
                    f"median x{median:.2f} (pairs x{min(ratios):.2f}-x{max(ratios):.2f})",
                    median,
                    "ratio",
                )
                summary.target, summary.verdict = ">= x1.7 of 1 process", verdict(median >= 1.7)
                self.add(summary)

    def fleet_row(
        self, broker: str, measure: str, result: dict[str, Any], one: Row | None, noop: bool
    ) -> Row:
        if not result["ok"]:
            return Row(broker, measure, failed(result), detail=result)
        elapsed_s = result["elapsed_s"]
        value = result["n"] / elapsed_s if noop else elapsed_s
        shown = f"{rate(value)}" if noop else f"{elapsed_s:.2f} s"
        if result.get("duplicates"):
            shown += f" ({result['duplicates']} ran twice)"
        row = Row(broker, measure, shown, value, "tasks/s" if noop else "s", detail=result)
        if one is not None and one.value:
            # how many times one process's throughput (fan-out: its time over this one's)
            ratio = value / one.value if noop else one.value / value
            row.vs_ceiling = f"x{ratio:.2f}"
        return row

    def fleet_run(
        self, broker: str, task: str, n: int, concurrent: int, processes: int, sleep_s: float
    ) -> dict[str, Any]:
        """Start ``geboost worker bench/fleet_tasks.py --processes N``, wait until its children
        consume, fill the queue from another process, wait for ``n`` calls, SIGTERM, merge."""
        queue = self.queue(broker, f"fleet-{task}-{processes}")
        LOG_DIR.mkdir(exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(prefix="fleet-", dir=LOG_DIR))
        fleet_spec = {
            "queue": queue,
            "broker": broker,
            "broker_url": BROKER_URLS[broker],
            "concurrent": concurrent,
            "sleep_s": sleep_s,
            "out_dir": str(out_dir),
        }
        env = {**os.environ, "GEBOOST_BENCH_FLEET": json.dumps(fleet_spec)}
        cmd = [sys.executable, "-m", "geboost", "worker", str(BENCH / "fleet_tasks.py")]
        cmd += ["--processes", str(processes)]
        log_path = out_dir / "worker.log"
        timeout_s = 60 + 4 * n * max(sleep_s, 1e-4) / concurrent
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, env=env, stderr=log, stdout=log)
            try:
                self.fleet_wait(
                    lambda: log_path.read_text().count(f"consuming {queue}") >= processes,
                    30,
                    "the worker processes did not start",
                )
                spec = self.spec(broker, queue=queue, task="noop", n=n, concurrent=concurrent)
                # Its own count check is moot (the workers drain as it fills): what ran is
                # checked at the end.
                run_process("worker.py", {**spec, "mode": "fill"}, timeout_s)
                self.fleet_wait(
                    lambda: _fleet_count(out_dir) >= n, timeout_s, "the tasks did not all run"
                )
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()  # by PID: only the supervisor we started
                    proc.wait()
        return _fleet_result(out_dir, n, code)

    @staticmethod
    def fleet_wait(condition: Callable[[], bool], timeout_s: float, why: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RunFailed(why)
            time.sleep(0.05)

    def delay_accuracy(self, broker: str) -> None:
        """How late delayed tasks start: ``delay_n`` due within the same second (delayed.py)."""
        n = self.sizes.delay_n
        queue = self.queue(broker, "delay-accuracy")
        result = run_process(
            "delayed.py", self.spec(broker, mode="accuracy", queue=queue, n=n), 180
        )
        measure = f"delayed: {n:,} due in the same second, late by"
        if not result["ok"]:
            self.add(Row(broker, measure, failed(result), detail=result))
            return
        median, p99 = result["median_ms"], result["p99_ms"]
        self.add(
            Row(
                broker,
                measure,
                f"median {median:.1f} ms, p99 {p99:.1f} ms",
                median,
                "ms",
                target="median <= 50, p99 <= 200",
                verdict=verdict(median <= 50 and p99 <= 200),
                detail=result,
            )
        )

    def delay_rss(self, broker: str) -> None:
        """A worker's resident set with ``delay_rss_n`` delayed tasks waiting, against idle."""
        n = self.sizes.delay_rss_n
        measure = f"delayed: {n:,} waiting, worker RSS"
        if broker == "memory":
            self.add(Row(broker, measure, "n/a: the memory broker lives in the worker"))
            return
        queue = self.queue(broker, "delay-rss")
        settle_s = self.sizes.delay_settle_s
        spec = self.spec(broker, mode="rss", queue=queue, n=n, settle_s=settle_s)
        result = run_process("delayed.py", spec, 900)
        if not result["ok"]:
            self.add(Row(broker, measure, failed(result), detail=result))
            return
        delta = result["delta_mb"]
        self.add(
            Row(
                broker,
                measure,
                f"{delta:+.1f} MB over idle ({result['idle_mb']:.0f} MB)",
                delta,
                "MB",
                target="<= +20 MB",
                verdict=verdict(delta <= 20),
                detail=result,
            )
        )

    def qps(self, broker: str) -> None:
        s = self.sizes
        result = self.consume(
            broker,
            "qps",
            s.qps_n / s.qps_limit,
            task="noop",
            n=s.qps_n,
            concurrent=50,
            qps=s.qps_limit,
        )
        row = self.rate_row(
            broker, f"qps: {s.qps_n:,} at qps_limit={s.qps_limit:g}", result, "start_rate_per_s"
        )
        if row.value is not None:
            error_pct = abs(row.value - s.qps_limit) / s.qps_limit * 100
            row.shown = f"{row.value:.1f}/s, error {error_pct:.2f} %"
            row.unit = "starts/s"
            row.target, row.verdict = "error <= 1 %", verdict(error_pct <= 1.0)
            row.detail["error_pct"] = error_pct
        self.add(row)

    def results(self, broker: str) -> None:
        """Issue 10: consume-noop with results stored, as a ratio of results off in the same
        run; and (Redis) the round trip ``push(i).get()`` one at a time on an idle worker."""
        s = self.sizes
        rates: dict[bool, float | None] = {}
        for on in (False, True):
            result = self.consume(
                broker,
                "results-on" if on else "results-off",
                1.0,
                s.consume_repeats,
                task="noop",
                n=s.noop_n,
                concurrent=s.noop_concurrent,
                results=on,
            )
            label = "on" if on else "off"
            measure = f"consume-noop results-{label}: {s.noop_n:,} @{s.noop_concurrent}"
            row = self.rate_row(broker, measure, result, "rate_per_s")
            rates[on] = row.value
            off = rates.get(False)
            if on and row.value is not None and off:
                ratio = row.value / off
                row.vs_ceiling = f"{ratio:.2f}"
                row.target, row.verdict = ">= 0.70 of results-off", verdict(ratio >= 0.7)
            self.add(row)
        if broker != "redis":
            return
        spec = self.spec(
            broker,
            mode="rpc",
            queue=self.queue(broker, "rpc"),
            task="noop",
            n=s.rpc_n,
            concurrent=s.noop_concurrent,
        )
        result = run_process("worker.py", spec, 120)
        measure = f"rpc round trip: {s.rpc_n:,} x push().get(), one at a time"
        if result["ok"]:
            shown = f"median {result['median_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
            value = result["median_ms"]
        else:
            shown, value = failed(result), None
        row = Row(broker, measure, shown, value, "ms", rss_mb=result.get("peak_rss_mb"))
        self.add(row)

    def available(self, broker: str) -> str:
        """Empty if a booster of this kind can push and count, else why not."""
        if broker == "memory":
            return ""
        spec = self.spec(
            broker, mode="probe", queue=self.queue(broker, "probe"), task="noop", n=1, concurrent=1
        )
        try:
            probe = run_process("worker.py", spec, 30)
        except RunFailed as exc:
            return str(exc).rsplit(": ", 1)[-1][:80]  # the driver's own words
        return "" if probe["ok"] else "a pushed message was not counted"

    def broker(self, broker: str) -> None:
        why = self.available(broker)
        if why:
            self.add(Row(broker, "all", f"n/a: broker not available ({why})"))
            return
        ceiling: dict[str, Any] = {}
        steps: list[tuple[str, Callable[[], object]]] = [
            ("publish", lambda: self.publish(broker, ceiling)),
            ("consume-noop", lambda: self.consume_noop(broker, ceiling)),
            *([("pairs", lambda: self.consume_pairs(broker))] if broker == "redis" else []),
            *(
                [("consume-typed", lambda: self.consume_typed(broker))]
                if broker == "memory"
                else []
            ),
            *[
                (fan.label, partial(self.fanout, broker, fan))
                for fan in self.runnable(fanouts(self.sizes), broker)
            ],
            ("qps", lambda: self.qps(broker)),
            ("results", lambda: self.results(broker)),
            *([("fleet", lambda: self.fleet(broker))] if broker == "redis" else []),
            ("delay-accuracy", lambda: self.delay_accuracy(broker)),
            ("delay-rss", lambda: self.delay_rss(broker)),
        ]
        for name, step in steps:
            if not self.wanted(name):
                continue
            try:
                step()
            except RunFailed as exc:
                self.add(Row(broker, name, f"FAILED ({exc})"))

    def wanted(self, name: str) -> bool:
        """--only: a step runs if its name starts with one of the names given (or none was)."""
        return not self.only or any(name.startswith(step) for step in self.only)


def _fleet_count(out_dir: Path) -> int:
    """Calls run so far, from the progress files of the worker processes."""
    total = 0
    for path in out_dir.glob("*.count"):
        try:
            total += int(path.read_text() or 0)
        except (OSError, ValueError):
            pass  # being rewritten: read again on the next poll
    return total


def _fleet_result(out_dir: Path, n: int, exit_code: int) -> dict[str, Any]:
    reports = [json.loads(p.read_text()) for p in out_dir.glob("*.json")]
    seen = bytearray(n)
    for report in reports:
        for i in report["ran"]:
            seen[i] += 1
    starts = [r["first_start"] for r in reports if r["first_start"]]
    ends = [r["last_end"] for r in reports if r["last_end"]]
    missing = seen.count(0)
    return {
        "ok": missing == 0 and exit_code == 0 and bool(starts),
        "n": n,
        "missing": missing,
        "duplicates": sum(1 for c in seen if c > 1),
        "exit_code": exit_code,
        "processes_reporting": len(reports),
        "elapsed_s": (max(ends) - min(starts)) if starts else 0.0,
    }


# --------------------------------------------------------------------- the table
COLUMNS = (
    ("broker", "broker"),
    ("measure", "measure"),
    ("shown", "geboost / figure"),
    ("vs_ceiling", "vs ceiling"),
    ("target", "target"),
    ("verdict", ""),
    ("rss", "RSS MB"),
    ("conns", "conns"),
)


def table(rows: list[Row]) -> str:
    cells = [
        {
            **{key: str(getattr(row, key, "")) for key, _ in COLUMNS[:6]},
            "rss": f"{row.rss_mb:.0f}" if row.rss_mb is not None else "",
            "conns": str(row.connections) if row.connections is not None else "",
        }
        for row in rows
    ]
    widths = {key: max([len(title)] + [len(c[key]) for c in cells]) for key, title in COLUMNS}
    lines = ["  ".join(title.ljust(widths[key]) for key, title in COLUMNS).rstrip()]
    lines.append("  ".join("-" * widths[key] for key, _ in COLUMNS))
    lines += ["  ".join(c[key].ljust(widths[key]) for key, _ in COLUMNS).rstrip() for c in cells]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--brokers", default=",".join(BROKERS), help="comma-separated, default: all"
    )
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated steps to run, by the start of their names (ceilings, publish, "
        "consume-noop, http-fanout, qps, results, fleet: the multi-process rows on Redis, "
        "delay-accuracy, delay-rss, ...)",
    )
    parser.add_argument(
        "--run-id",
        default=f"geboost-bench-{uuid.uuid4().hex[:8]}",
        help="prefix of the run's queue names (the test suite passes its session tag)",
    )
    args = parser.parse_args()
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = set(brokers) - set(BROKERS)
    if unknown:
        parser.error(f"unknown broker(s) {sorted(unknown)}; choose from {BROKERS}")
    sizes = QUICK if args.quick else Sizes()
    run_id = args.run_id
    started = time.monotonic()
    with http_server(sizes.http_delay_s) as url:
        bench = Bench(sizes, run_id, url)
        bench.only = {step.strip() for step in args.only.split(",") if step.strip()}
        try:
            try:
                if not bench.only or "ceilings" in bench.only:
                    bench.pool_ceilings()
            except RunFailed as exc:
                bench.add(Row("gevent", "ceilings", f"FAILED ({exc})"))
            for broker in brokers:
                bench.broker(broker)
        finally:
            cleanup = {"mode": "cleanup", "redis_prefix": run_id, "rabbit_queues": bench.queues}
            if set(brokers) - {"memory"}:
                try:
                    run_process("ceiling.py", cleanup, 60)
                except RunFailed as exc:
                    print(f"cleanup failed: {exc}", file=sys.stderr)
    elapsed_s = time.monotonic() - started
    print(table(bench.rows))
    cpu = machine()["cpu"]
    print(f"\n{len(bench.rows)} rows in {elapsed_s:.0f} s on {cpu} ({os.cpu_count()} cores)")
    print("[calls: ...] = until the last call ended; the figure before it runs to its last ack")
    print(f"logs of every process: {LOG_DIR}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
                    "machine": machine(),
                    "elapsed_s": elapsed_s,
                    "sizes": asdict(sizes),
                    "rows": [asdict(row) for row in bench.rows],
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if any(row.shown.startswith("FAILED") for row in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())

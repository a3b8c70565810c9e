"""Fetch 10,000 URLs, 1,000 at a time, with the plain blocking urllib.

Needs no network: it starts the benchmark's local HTTP server (``bench/http_server.py``, which
answers every request after 100 ms) and stops it at the end. 10,000 requests of 100 ms with
1,000 in flight are about 1 s of waiting; the rest of the time is the CPU cost of HTTP.

On its own, in one process (the memory broker, or Redis with SCRAPE_BROKER=redis):
    python examples/scrape.py [--n 10000] [--concurrency 1000]
With a fleet of worker processes on Redis (the workers import this file to find the booster):
    SCRAPE_BROKER=redis geboost worker examples/scrape.py --processes 2    # terminal 1
    SCRAPE_BROKER=redis python examples/scrape.py --fleet                  # terminal 2
"""

# isort: off
import geboost  # first: patches the standard library, so urllib below yields while it waits
# isort: on

import argparse
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from geboost import BoostOptions, BrokerKind, new_booster

SERVER = Path(__file__).resolve().parent.parent / "bench" / "http_server.py"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fetch many URLs at once from a local server.")
    parser.add_argument("--n", type=int, default=10_000, help="URLs to fetch")
    parser.add_argument("--concurrency", type=int, default=1_000, help="requests in flight")
    parser.add_argument(
        "--fleet", action="store_true", help="only push, and wait for `geboost worker` processes"
    )
    return parser.parse_args()


# The worker processes import this file: what they need is read from the environment.
ARGS = parse_args() if __name__ == "__main__" else None
CONCURRENCY = ARGS.concurrency if ARGS else int(os.environ.get("SCRAPE_CONCURRENCY", "1000"))

fetched: set[str] = set()
fleet_failed = 0  # URLs the worker processes dead-lettered (--fleet)
last_fetch_done = 0.0


def fetch(url: str) -> None:
    global last_fetch_done
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    fetched.add(url)
    last_fetch_done = time.monotonic()


fetch_booster = new_booster(
    BoostOptions(
        queue_name=os.environ.get("SCRAPE_QUEUE", "scrape"),
        consume_func=fetch,
        broker_kind=BrokerKind(os.environ.get("SCRAPE_BROKER", "memory")),
        concurrent_num=CONCURRENCY,  # requests in flight at once, one greenlet each
    )
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def scrape(urls: list[str]) -> float:
    """Fetch every URL in this process; returns the seconds until the last one was read."""
    fetch_booster.push_many([(url,) for url in urls])
    started = time.monotonic()
    fetch_booster.consume()
    fetch_booster.wait_until_idle(timeout_s=300)
    fetch_booster.stop()
    return last_fetch_done - started


def scrape_with_fleet(urls: list[str]) -> float:
    """Push every URL and wait until the worker processes took and finished them all."""
    started = time.monotonic()
    dead_before = fetch_booster.dead_letter_count()
    fetch_booster.push_many([(url,) for url in urls])
    deadline = started + 300
    while fetch_booster.message_count() or fetch_booster.in_flight_count():
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not finish in 300 s: are they running?")
        time.sleep(0.02)
    elapsed_s = time.monotonic() - started
    global fleet_failed
    fleet_failed = fetch_booster.dead_letter_count() - dead_before
    return elapsed_s


def main(args: argparse.Namespace) -> int:
    if args.fleet and fetch_booster.options.broker_kind == BrokerKind.MEMORY:
        print("--fleet needs a broker the workers share: set SCRAPE_BROKER=redis", file=sys.stderr)
        return 2
    # Every open connection is a file: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    port = free_port()
    server = subprocess.Popen([sys.executable, str(SERVER), str(port)])
    try:
        wait_for_port(port, timeout_s=15)
        urls = [f"http://127.0.0.1:{port}/{i}" for i in range(args.n)]
        elapsed_s = scrape_with_fleet(urls) if args.fleet else scrape(urls)
    finally:
        server.terminate()
        server.wait(timeout=10)
    done = args.n - fleet_failed if args.fleet else len(fetched)
    where = "by the worker processes" if args.fleet else f"{CONCURRENCY} at a time"
    print(
        f"fetched {done} of {args.n} URLs in {elapsed_s:.2f} s "
        f"({args.n / elapsed_s:,.0f}/s, {where}, geboost {geboost.__version__})"
    )
    return 0 if done == args.n else 1


if __name__ == "__main__":
    assert ARGS is not None
    sys.exit(main(ARGS))

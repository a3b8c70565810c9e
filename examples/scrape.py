"""Fetch 10,000 URLs, 1,000 at a time, with the plain blocking urllib, on one process.

Needs no network: it starts the benchmark's local HTTP server (``bench/http_server.py``, which
answers every request after 100 ms) and stops it at the end. 10,000 requests of 100 ms with
1,000 in flight are about 1 s of waiting; the rest of the time is the CPU cost of HTTP.
    python examples/scrape.py [--n 10000] [--concurrency 1000]
"""

# isort: off
import geboost  # first: patches the standard library, so urllib below yields while it waits
# isort: on

import argparse
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from geboost import BoostOptions, BrokerKind, new_booster

SERVER = Path(__file__).resolve().parent.parent / "bench" / "http_server.py"

fetched: set[str] = set()
last_fetch_done = 0.0


def fetch(url: str) -> None:
    global last_fetch_done
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    fetched.add(url)
    last_fetch_done = time.monotonic()


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


def scrape(urls: list[str], concurrency: int) -> float:
    """Fetch every URL through a booster; returns the seconds until the last one was read."""
    booster = new_booster(
        BoostOptions(
            queue_name="scrape",
            consume_func=fetch,
            broker_kind=BrokerKind.MEMORY,
            concurrent_num=concurrency,  # requests in flight at once, one greenlet each
        )
    )
    booster.push_many([(url,) for url in urls])
    started = time.monotonic()
    booster.consume()
    booster.wait_until_idle(timeout_s=300)
    booster.stop()
    return last_fetch_done - started


def main() -> int:
    parser = argparse.ArgumentParser(description="Fetch many URLs at once from a local server.")
    parser.add_argument("--n", type=int, default=10_000, help="URLs to fetch")
    parser.add_argument("--concurrency", type=int, default=1_000, help="requests in flight")
    args = parser.parse_args()
    # Every open connection is a file: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    port = free_port()
    server = subprocess.Popen([sys.executable, str(SERVER), str(port)])
    try:
        wait_for_port(port, timeout_s=15)
        urls = [f"http://127.0.0.1:{port}/{i}" for i in range(args.n)]
        elapsed_s = scrape(urls, args.concurrency)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(
        f"fetched {len(fetched)} of {args.n} URLs in {elapsed_s:.2f} s "
        f"({args.n / elapsed_s:,.0f}/s, {args.concurrency} at a time, "
        f"geboost {geboost.__version__})"
    )
    return 0 if len(fetched) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())

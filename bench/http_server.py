"""A local HTTP server that answers every request after a cooperative 100 ms pause.

    python bench/http_server.py PORT [DELAY_S]

gevent's WSGI server, one greenlet per connection, so it holds thousands of requests waiting at
once. The body is the request's path without its leading slash, so a client can check that it
got the answer to its own request. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import resource
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer

LISTEN_BACKLOG = 4096  # 1,000 clients connect at once; the kernel caps it at net.core.somaxconn


def raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard limit (each connection is one file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_app(delay_s: float) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        gevent.sleep(delay_s)
        body = environ.get("PATH_INFO", "/")[1:].encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def main() -> None:
    port = int(sys.argv[1])
    delay_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
    raise_open_files_limit()
    server = WSGIServer(("127.0.0.1", port), make_app(delay_s), log=None, backlog=LISTEN_BACKLOG)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    server.serve_forever()


if __name__ == "__main__":
    main()

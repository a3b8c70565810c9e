"""The ``geboost`` command (also ``python -m geboost``).

Exit codes: 0 done; 1 a runtime failure (a broker that does not answer, a worker process that
had to be killed); 2 a usage error (bad arguments, a queue no booster has, no module given);
3 a module that does not import (its traceback is printed first).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from geboost.cli.loading import MODULES_ENV, CommandError

__all__ = ["build_parser", "main"]

_EPILOG = (
    f"Modules: positional (worker, status) and/or -m/--module, repeatable, and {MODULES_ENV} "
    "(comma-separated); each is a file path (app/tasks.py) or a dotted name (app.tasks). "
    "Exit codes: 0 ok, 1 runtime failure (broker down...), 2 usage error, 3 module import error."
)


def _module_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--module",
        action="append",
        metavar="MODULE",
        help=f"a module defining boosters (repeatable; also {MODULES_ENV}=a,b)",
    )


def build_parser() -> argparse.ArgumentParser:
    from geboost.cli import commands

    parser = argparse.ArgumentParser(
        prog="geboost", description="Run and inspect geboost workers.", epilog=_EPILOG
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    w = sub.add_parser(
        "worker",
        help="consume the boosters of the modules until SIGTERM/SIGINT",
        description="Import the modules and consume every booster they build (or --queues) "
        "until SIGTERM/SIGINT, then stop gracefully and exit 0. With --processes N > 1, a "
        "supervisor runs N fresh worker processes, restarts those that die, and stops them all "
        "on SIGTERM/SIGINT (a second signal kills them).",
        epilog=_EPILOG,
    )
    w.add_argument("modules", nargs="*", metavar="MODULE")
    _module_option(w)
    w.add_argument("--processes", type=int, default=1, metavar="N", help="worker processes")
    w.add_argument("--queues", metavar="Q1,Q2", help="consume only these queues")
    w.add_argument(
        "--scheduler",
        action="store_true",
        help="also run the boosters' periodic schedules (b.every / b.cron); safe in any number "
        "of workers: each tick is pushed once",
    )
    w.set_defaults(run=commands.worker)

    s = sub.add_parser(
        "status",
        help="a table of the queues: waiting, in flight, dead letters...",
        description="One line per queue; '-' where a figure is unknown.",
        epilog=_EPILOG,
    )
    s.add_argument("modules", nargs="*", metavar="MODULE")
    _module_option(s)
    s.add_argument("--queues", metavar="Q1,Q2", help="show only these queues")
    s.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    s.set_defaults(run=commands.status)

    d = sub.add_parser(
        "dlq",
        help="show, requeue or purge a queue's dead letters",
        description="show: list dead letters (without removing them); requeue: put them back "
        "on the queue as first sent; purge: delete them. Each prints its counts.",
        epilog=_EPILOG,
    )
    d.add_argument("action", choices=("show", "requeue", "purge"))
    d.add_argument("queue", metavar="QUEUE")
    _module_option(d)
    d.add_argument("--limit", type=int, default=None, help="at most this many letters")
    d.add_argument("-v", "--verbose", action="store_true", help="show: bodies and tracebacks")
    d.set_defaults(run=commands.dlq, modules=[])

    p = sub.add_parser(
        "purge",
        help="delete every waiting message of a queue",
        description="Delete every waiting message of QUEUE (not those in flight, not the dead "
        "letters) and print how many.",
        epilog=_EPILOG,
    )
    p.add_argument("queue", metavar="QUEUE")
    _module_option(p)
    p.set_defaults(run=commands.purge, modules=[])

    for name, what in (("pause", "stop"), ("resume", "start again")):
        c = sub.add_parser(
            name,
            help=f"{name} a queue fleet-wide (needs a state store)",
            description=f"Every worker of QUEUE, in any process sharing its state store, will "
            f"{what} starting calls within 1 s. Calls in flight are not interrupted.",
            epilog=_EPILOG,
        )
        c.add_argument("queue", metavar="QUEUE")
        _module_option(c)
        c.set_defaults(run=commands.pause_or_resume, modules=[])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 with argparse's usage line on bad input
    if getattr(args, "action", None) == "show" and args.limit is None:
        args.limit = 100
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CommandError as exc:
        print(f"geboost {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0

"""The subcommands: worker, status, dlq show|requeue|purge, purge."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gevent
from loguru import logger

from geboost import signals
from geboost.cli.loading import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    CommandError,
    load_modules,
    modules_from,
    select_boosters,
)
from geboost.cli.supervisor import SUPERVISOR_PID_ENV, run_workers
from geboost.errors import GeboostError
from geboost.schedule import Scheduler

if TYPE_CHECKING:
    from geboost.booster import Booster

__all__ = ["dlq", "pause_or_resume", "purge", "status", "worker"]

WIDTH = 80


def _boosters(args: argparse.Namespace, queues: Sequence[str] | None) -> list[Booster[Any, Any]]:
    load_modules(modules_from(getattr(args, "modules", []), args.module))
    return select_boosters(queues)


def _broker_call(booster: Booster[Any, Any], what: str, call: Any) -> Any:
    """``call()``, its broker errors turned into the command's one line and exit code 1."""
    try:
        return call()
    except GeboostError as exc:
        raise CommandError(
            f"queue {booster.queue_name!r}: {what} failed: {type(exc).__name__}: {exc}",
            EXIT_RUNTIME,
        ) from exc


def _queues(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [q.strip() for q in text.split(",") if q.strip()]


# --------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise CommandError(f"--processes must be >= 1, got {args.processes}", EXIT_USAGE)
    queues = _queues(args.queues)
    modules = modules_from(args.modules, args.module)
    if args.processes > 1:
        # The supervisor imports none of the modules: its children do.
        return run_workers(modules, args.processes, queues, scheduler=args.scheduler)
    # Until the boosters consume, a stop request simply ends the process: nothing to settle.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_before_consuming)
    load_modules(modules)
    boosters = select_boosters(queues)
    for booster in boosters:
        _broker_call(booster, "reaching the broker", booster.message_count)
    scheduler = _scheduler(boosters) if args.scheduler else None
    for booster in boosters:
        booster.consume()
        signals.watch(booster)  # whatever its handle_signals: a worker stops on SIGTERM/SIGINT
    logger.info("worker {} consuming {}", os.getpid(), ", ".join(b.queue_name for b in boosters))
    watcher = _watch_supervisor()
    gevent.joinall([gevent.spawn(b.join) for b in boosters])
    if scheduler is not None:
        scheduler.stop()
    if watcher is not None:
        watcher.kill()
    logger.info("worker {} stopped", os.getpid())
    return 0


def _scheduler(boosters: Sequence[Booster[Any, Any]]) -> Scheduler:
    """The periodic schedules of ``boosters`` (registered by the modules with every/cron),
    started; refused when no booster has one, so a forgotten registration is noticed."""
    if not any(b.schedules for b in boosters):
        raise CommandError(
            "--scheduler: none of the boosters has a schedule (register them with b.every(...) "
            "or b.cron(...) in the module)",
            EXIT_USAGE,
        )
    try:
        return Scheduler(boosters).start()
    except GeboostError as exc:
        raise CommandError(f"--scheduler: {exc}", EXIT_USAGE) from exc


def _stop_before_consuming(signum: int, _frame: object) -> None:
    logger.info("worker {} stopped before consuming ({})", os.getpid(), signal.Signals(signum).name)
    raise SystemExit(0)


def _watch_supervisor() -> gevent.Greenlet[Any, Any] | None:
    """In a supervised child: stop gracefully if the supervisor is gone (we were re-parented)."""
    text = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not text.isdigit():
        return None
    supervisor = int(text)

    def watch() -> None:
        while os.getppid() == supervisor:
            gevent.sleep(1.0)
        logger.warning("supervisor {} is gone: stopping", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    return gevent.spawn(watch)


# --------------------------------------------------------------------------------- status
COLUMNS = ("WAITING", "IN FLIGHT", "DELAYED", "DEAD", "PAUSED", "CONSUMERS")
_NUMBER_WIDTH = 9


def status(args: argparse.Namespace) -> int:
    boosters = _boosters(args, _queues(args.queues))
    if not args.watch:
        sys.stdout.write(status_table(boosters))
        return 0
    try:
        while True:
            table = status_table(boosters)
            sys.stdout.write("\x1b[H\x1b[2J" + table)  # home, clear screen: one redraw
            sys.stdout.flush()
            gevent.sleep(1.0)
    except KeyboardInterrupt:
        return 0


def status_table(boosters: Sequence[Booster[Any, Any]]) -> str:
    """One line per queue, 80 columns; '-' where a figure is unknown (or not built yet)."""
    numbers_width = len(COLUMNS) * (_NUMBER_WIDTH + 1)
    name_width = WIDTH - numbers_width
    lines = [_row("QUEUE", COLUMNS, name_width)]
    for b in boosters:
        waiting = _broker_call(b, "counting", b.message_count)
        in_flight = _broker_call(b, "counting", b.in_flight_count)
        dead = _broker_call(b, "counting", b.dead_letter_count)
        paused, consumers = _fleet_figures(b)
        delayed = _broker_call(b, "counting", b.delayed_count)
        cells = [_cell(waiting), _cell(in_flight), _cell(delayed), _cell(dead), paused]
        cells.append(_cell(consumers))
        lines.append(_row(_fit(b.queue_name, name_width), cells, name_width))
    return "\n".join(lines) + "\n"


def _fleet_figures(b: Booster[Any, Any]) -> tuple[str, int | None]:
    """Paused or not, and the consumers registered: '-' and None without a state store."""
    if b.state_store is None:
        return "-", None
    paused = _broker_call(b, "reading the pause flag", b.is_paused)
    workers = _broker_call(b, "reading the worker registry", b.workers)
    return ("yes" if paused else "no"), len(workers)


def _row(name: str, cells: Sequence[str], name_width: int) -> str:
    return f"{name:<{name_width}}" + "".join(f" {c:>{_NUMBER_WIDTH}}" for c in cells)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def _fit(name: str, width: int) -> str:
    """The name, its middle replaced by '~' when it does not fit (both ends stay readable)."""
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep - keep // 2] + "~" + name[len(name) - keep // 2 :]


# --------------------------------------------------------------------------------- dlq, purge
def dlq(args: argparse.Namespace) -> int:
    (booster,) = _boosters(args, [args.queue])
    dead_queue = booster.dead_letter_queue_name
    if args.action == "show":
        total = _broker_call(booster, "counting", booster.dead_letter_count)
        letters = _broker_call(booster, "reading", lambda: booster.dead_letters(args.limit))
        for letter in letters:
            error = letter.error.splitlines()[0] if letter.error else ""
            print(f"{letter.task_id or '-'}  attempts={letter.attempts}  {error}")
            if args.verbose:
                print(f"  body: {letter.body}")
                if letter.traceback:
                    print("  " + letter.traceback.rstrip().replace("\n", "\n  "))
        print(f"{total} dead letter(s) in {dead_queue}, {len(letters)} shown")
    elif args.action == "requeue":
        moved = _broker_call(
            booster, "requeueing", lambda: booster.requeue_dead_letters(args.limit)
        )
        left = _broker_call(booster, "counting", booster.dead_letter_count)
        print(
            f"requeued {moved} dead letter(s) to {booster.queue_name}; {left} left in {dead_queue}"
        )
    else:
        removed = _broker_call(booster, "purging", lambda: booster.broker.purge(dead_queue))
        print(f"purged {removed} dead letter(s) from {dead_queue}")
    return 0


def pause_or_resume(args: argparse.Namespace) -> int:
    """``geboost pause QUEUE`` / ``geboost resume QUEUE``: the fleet-wide flag."""
    (booster,) = _boosters(args, [args.queue])
    if booster.state_store is None:
        raise CommandError(
            f"queue {booster.queue_name!r} has no state store (set state_url)", EXIT_USAGE
        )
    if args.command == "pause":
        _broker_call(booster, "pausing", booster.pause)
        print(f"paused {booster.queue_name}: every worker stops starting calls within 1 s")
    else:
        _broker_call(booster, "resuming", booster.resume)
        print(f"resumed {booster.queue_name}: workers start calls again within 1 s")
    return 0


def purge(args: argparse.Namespace) -> int:
    (booster,) = _boosters(args, [args.queue])
    removed = _broker_call(booster, "purging", booster.purge)
    print(f"purged {removed} waiting message(s) from {booster.queue_name}")
    return 0

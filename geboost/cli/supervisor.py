"""The supervisor of ``geboost worker --processes N``: N fresh worker processes, kept alive.

Each child is a new interpreter (``python -m geboost worker ...``), never a fork: the supervisor
imports none of the user's modules and opens no broker connection, so a child inherits no socket
and no half-initialised client. The children get a session of their own (a terminal's Ctrl-C
reaches the supervisor only, which then stops them once, in order) and stop by themselves if the
supervisor disappears (they watch their parent process id).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from loguru import logger

from geboost.errors import ConfigurationError
from geboost.signals import STOP_TIMEOUT_S

__all__ = ["SUPERVISOR_PID_ENV", "Supervisor", "module_of", "run_workers", "worker_command"]

SUPERVISOR_PID_ENV = "GEBOOST_SUPERVISOR_PID"
RESTART_DELAY_FIRST_S = 0.5
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 30.0
"""A child that ran this long before dying is restarted after the first delay again."""
_KILL_MARGIN_S = 5.0  # beyond the stop timeout, before a child that does not stop is killed
_CONFIG_EXIT_CODES = (2, 3)  # a child's usage or import error: restarting cannot help


def worker_command(
    modules: Sequence[str], queues: Sequence[str] | None, *, scheduler: bool = False
) -> list[str]:
    """The command line of one child; file paths are made absolute (the child's cwd is ours)."""
    paths = [str(Path(m).resolve()) if m.endswith(".py") or os.sep in m else m for m in modules]
    cmd = [sys.executable, "-m", "geboost", "worker", *paths]
    if queues:
        cmd += ["--queues", ",".join(queues)]
    if scheduler:
        # Every child runs one: ticks are claimed in the state store, so each is pushed once.
        cmd.append("--scheduler")
    return cmd


def module_of(func: Callable[..., Any]) -> str:
    """What a child imports to find ``func``'s booster: the file of a script run as ``__main__``
    (imported under its stem), else the module's dotted name."""
    name = getattr(func, "__module__", None)
    if name == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise ConfigurationError(
                "multi_process_consume needs the booster's function in a file: the children "
                "import it to find the booster (this one was defined interactively)"
            )
        return str(Path(path).resolve())
    if not name:
        raise ConfigurationError(f"cannot tell which module defines {func!r}")
    return str(name)


def run_workers(
    modules: Sequence[str],
    processes: int,
    queues: Sequence[str] | None = None,
    *,
    scheduler: bool = False,
) -> int:
    """Consume the boosters of ``modules`` (or only ``queues``) in ``processes`` worker processes
    under a supervisor; blocks until SIGTERM/SIGINT and returns the exit code (0 when every
    child stopped gracefully). ``scheduler``: each child also runs the boosters' periodic
    schedules (each tick is still pushed once)."""
    if processes < 1:
        raise ConfigurationError(f"processes must be >= 1, got {processes!r}")
    if not modules:
        raise ConfigurationError("run_workers needs at least one module")
    return Supervisor(worker_command(modules, queues, scheduler=scheduler), processes).run()


class _Child:
    __slots__ = ("delay_s", "index", "proc", "restart_at", "started_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at = 0.0
        self.delay_s = 0.0


class Supervisor:
    """Runs ``cmd`` ``processes`` times, restarts a child that dies (after 0.5 s, doubling up to
    30 s; back to 0.5 s once a child ran 30 s), stops them all on the first SIGTERM/SIGINT and
    kills them on the second."""

    def __init__(
        self, cmd: Sequence[str], processes: int, stop_timeout_s: float = STOP_TIMEOUT_S
    ) -> None:
        self.cmd = list(cmd)
        self.children = [_Child(i) for i in range(processes)]
        self.stop_timeout_s = stop_timeout_s
        self._stop = gevent.event.Event()
        self._kill = gevent.event.Event()
        self._exit_code = 0

    def run(self) -> int:
        handlers = [
            gevent.signal_handler(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        ]
        logger.info(
            "supervisor {} starting {} worker process(es): {}",
            os.getpid(),
            len(self.children),
            " ".join(self.cmd[1:]),
        )
        try:
            while not self._stop.is_set():
                for child in self.children:
                    self._tend(child)
                self._stop.wait(0.2)
            self._stop_children()
        finally:
            for handler in handlers:
                handler.cancel()
        return self._exit_code

    def _on_signal(self) -> None:
        if self._stop.is_set():
            logger.warning("second signal: killing the worker processes")
            self._exit_code = 1
            self._kill.set()
            return
        logger.info("supervisor stopping its worker processes (up to {} s)", self.stop_timeout_s)
        self._stop.set()

    def _tend(self, child: _Child) -> None:
        now = time.monotonic()
        proc = child.proc
        if proc is not None:
            code = proc.poll()
            if code is None:
                return
            child.proc = None
            if code in _CONFIG_EXIT_CODES:
                logger.error(
                    "worker process {} exited with {} (a usage or import error): stopping",
                    proc.pid,
                    code,
                )
                self._exit_code = code
                self._stop.set()
                return
            ran_s = now - child.started_at
            child.delay_s = (
                RESTART_DELAY_FIRST_S
                if ran_s >= STABLE_AFTER_S or child.delay_s == 0
                else min(child.delay_s * 2, RESTART_DELAY_MAX_S)
            )
            child.restart_at = now + child.delay_s
            logger.warning(
                "worker process {} died ({}) after {:.1f} s; restarting it in {} s",
                proc.pid,
                _describe(code),
                ran_s,
                child.delay_s,
            )
            return
        if now >= child.restart_at:
            env = dict(os.environ)
            env[SUPERVISOR_PID_ENV] = str(os.getpid())
            child.proc = subprocess.Popen(self.cmd, env=env, start_new_session=True)
            child.started_at = now
            logger.info("worker process {} started (slot {})", child.proc.pid, child.index)

    def _stop_children(self) -> None:
        procs = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            _send(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s + _KILL_MARGIN_S
        while any(p.poll() is None for p in procs):
            if self._kill.is_set() or time.monotonic() >= deadline:
                for proc in procs:
                    _send(proc, signal.SIGKILL)
                if not self._kill.is_set():
                    logger.error("worker processes did not stop in time: killed")
                    self._exit_code = 1
                self._kill.set()
            gevent.sleep(0.1)
        for proc in procs:
            code = proc.wait()
            if code != 0 and not self._kill.is_set():
                logger.warning("worker process {} ended with {}", proc.pid, _describe(code))
        logger.info("supervisor {} stopped", os.getpid())


def _send(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass  # already gone


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"

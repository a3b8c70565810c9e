"""SIGTERM / SIGINT: stop every consuming booster gracefully, like ``Booster.stop()``.

The first signal stops the boosters (running calls get ``stop_timeout_s`` to finish, unstarted
messages go back to the broker); a second one while stopping restores the default behaviour and
re-delivers the signal, so an impatient operator can still end the process at once. Messages
that are interrupted that way are not acknowledged, so the broker delivers them again.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from geboost.booster import Booster

__all__ = ["STOP_TIMEOUT_S", "unwatch", "watch"]

STOP_TIMEOUT_S = 30.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_watched: list[Booster[Any, Any]] = []
_handlers: list[Any] = []
_stopping = False


def watch(booster: Booster[Any, Any]) -> None:
    """Stop ``booster`` on SIGTERM/SIGINT. Installs the handlers once (main thread only)."""
    if booster not in _watched:
        _watched.append(booster)
    if _handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in _SIGNALS:
        _handlers.append(gevent.signal_handler(signum, _on_signal, signum))


def unwatch(booster: Booster[Any, Any]) -> None:
    if booster in _watched:
        _watched.remove(booster)
    if not _watched and not _stopping:
        _restore()


def _restore() -> None:
    for handler in _handlers:
        handler.cancel()
    _handlers.clear()


def _on_signal(signum: int) -> None:
    global _stopping
    if _stopping:
        _restore()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stopping = True
    boosters = list(_watched)

    def stop_all() -> None:
        global _stopping
        gevent.joinall([gevent.spawn(b.stop, STOP_TIMEOUT_S) for b in boosters])
        _stopping = False
        _restore()

    gevent.spawn(stop_all)

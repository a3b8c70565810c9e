"""Every ``Booster`` built in this process, by queue name: how ``geboost worker`` and the other
commands find the boosters of the modules they import.

Two boosters built for one queue name: the last one wins, with a warning naming both functions.
Importing a module twice is the usual cause (a script run as ``__main__`` that is also
imported by its name): refusing it would break such programs, while the warning shows the
mistake when the two really are different functions.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from geboost.log import queue_logger

if TYPE_CHECKING:
    from geboost.booster import Booster

__all__ = ["get_booster", "register", "registered_boosters"]

_boosters: dict[str, Booster[Any, Any]] = {}
_lock = threading.Lock()


def register(booster: Booster[Any, Any]) -> None:
    """Record ``booster`` under its queue name (``Booster.__init__`` calls this)."""
    name = booster.queue_name
    with _lock:
        previous = _boosters.get(name)
        _boosters[name] = booster
    if previous is not None and previous is not booster:
        queue_logger(name).warning(
            "a second booster was built for queue {!r}: {} replaces {} in the registry",
            name,
            _func_name(booster),
            _func_name(previous),
        )


def registered_boosters() -> dict[str, Booster[Any, Any]]:
    """A copy of the registry: queue name -> the booster last built for it in this process."""
    with _lock:
        return dict(_boosters)


def get_booster(queue_name: str) -> Booster[Any, Any] | None:
    with _lock:
        return _boosters.get(queue_name)


def _func_name(booster: Booster[Any, Any]) -> str:
    func = booster.options.consume_func
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"

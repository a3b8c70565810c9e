"""Importing the user's modules for the commands, and picking their boosters from the registry."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geboost.registry import registered_boosters

if TYPE_CHECKING:
    from geboost.booster import Booster

__all__ = ["CommandError", "load_modules", "modules_from", "select_boosters"]

MODULES_ENV = "GEBOOST_MODULES"
"""Modules for every command, comma-separated, added to those named on the command line."""


class CommandError(Exception):
    """A command failed: ``message`` is the one line printed, ``exit_code`` the process's code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_IMPORT = 3


def modules_from(positional: Sequence[str], options: Sequence[str] | None) -> list[str]:
    """The modules a command works on: positional ones, ``-m`` ones, then ``GEBOOST_MODULES``."""
    names = [*positional, *(options or [])]
    names += [m.strip() for m in os.environ.get(MODULES_ENV, "").split(",") if m.strip()]
    if not names:
        raise CommandError(
            f"no module given: name the modules defining your boosters (-m/--module or "
            f"{MODULES_ENV})",
            EXIT_USAGE,
        )
    return list(dict.fromkeys(names))


def is_path(name: str) -> bool:
    return name.endswith(".py") or os.sep in name


def load_modules(names: Iterable[str]) -> None:
    """Import each module: a file path (``app/tasks.py``) or a dotted name (``app.tasks``).

    The current directory goes on ``sys.path`` first, as ``python -m`` does; a file's own
    directory too, as ``python file.py`` does, so that it can import its neighbours. A file is
    imported under its stem, not as ``__main__``, so its ``if __name__ == "__main__":`` block
    does not run.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        try:
            _load(name)
        except CommandError:
            raise
        except Exception as exc:  # the user's module: anything may go wrong in it
            traceback.print_exc()
            raise CommandError(
                f"cannot import module {name!r}: {type(exc).__name__}: {exc}", EXIT_IMPORT
            ) from exc


def _load(name: str) -> None:
    if not is_path(name):
        importlib.import_module(name)
        return
    path = Path(name).resolve()
    if not path.is_file():
        raise CommandError(f"cannot import module {name!r}: no such file", EXIT_IMPORT)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"cannot import module {name!r}: not a Python file", EXIT_IMPORT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before running it, as import does (dataclasses, pickle)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise


def select_boosters(queues: Sequence[str] | None) -> list[Booster[Any, Any]]:
    """The registered boosters, or those of ``queues`` (an unknown name is an error)."""
    known = registered_boosters()
    if not known:
        raise CommandError("the modules define no booster", EXIT_USAGE)
    if not queues:
        return [known[name] for name in sorted(known)]
    unknown = [q for q in queues if q not in known]
    if unknown:
        raise CommandError(
            f"no booster has queue {unknown[0]!r} (known: {', '.join(sorted(known))})",
            EXIT_USAGE,
        )
    return [known[q] for q in dict.fromkeys(queues)]

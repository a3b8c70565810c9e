"""Logging through loguru: geboost's records carry the queue name (and task id where there is
one), go to the console through loguru's own default handler, and, when ``log_file`` is set, to
a rotating file sink.

geboost never removes or reconfigures handlers it did not add, so an application that set up
loguru itself keeps its configuration. ``enqueue=True`` is never used: it relies on a thread and
a multiprocessing queue and is known to hang under gevent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from geboost.errors import ConfigurationError

if TYPE_CHECKING:
    from loguru import Logger, Record

__all__ = ["add_file_sink", "queue_logger"]

_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{line} | {message}"
_file_sinks: dict[str, int] = {}


def queue_logger(queue_name: str) -> Logger:
    """A logger whose records carry ``queue`` and ``task_id`` (``-`` until bound).

    Both are also written at the front of the message, so that they show in ANY handler's
    format, including loguru's default console one, not only in sinks that print ``extra``.
    """
    return logger.bind(geboost=True, queue=queue_name, task_id="-").patch(_prefix)


def _prefix(record: Record) -> None:
    extra = record["extra"]
    task_id = extra.get("task_id", "-")
    where = f"[{extra['queue']}]" if task_id == "-" else f"[{extra['queue']} task={task_id}]"
    record["message"] = f"{where} {record['message']}"


def _is_geboost(record: Record) -> bool:
    return bool(record["extra"].get("geboost"))


def add_file_sink(path: str, *, level: str, rotation: str, retention: str | int) -> None:
    """Add (once per path) a rotating file sink that receives geboost's records only.

    Raises ``ConfigurationError`` naming the option loguru could not understand.
    """
    if not path or path in _file_sinks:
        return
    try:
        _file_sinks[path] = logger.add(
            path,
            level=level,
            format=_FORMAT,
            filter=_is_geboost,
            rotation=rotation,
            retention=retention,
            enqueue=False,
            encoding="utf-8",
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"log options (log_file={path!r}, log_level={level!r}, log_rotation={rotation!r}, "
            f"log_retention={retention!r}) were refused by loguru: {exc}"
        ) from exc

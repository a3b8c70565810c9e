"""Logging through loguru: geboost's records carry the queue name (and task id where there is
one), go to the console through loguru's own default handler (and to any handler the
application added), and, when ``log_file`` is set, to a rotating file sink.

``log_level`` works like the level of a standard-library logger, not of a handler: geboost's
records about a queue below the level of its booster are not emitted at all, so no handler
prints them, while each handler's own level still applies to the rest. This is the only way to
quiet geboost on loguru's default console handler without touching that handler: geboost never
removes or reconfigures handlers it did not add, so an application that set up loguru itself
keeps its configuration, and no record is printed twice. ``enqueue=True`` is never used: it
relies on a thread and a multiprocessing queue and is known to hang under gevent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger

from geboost.errors import ConfigurationError

if TYPE_CHECKING:
    from loguru import Logger, Record

__all__ = ["QueueLogger", "add_file_sink", "level_number", "queue_logger", "set_queue_level"]

_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{line} | {message}"
_DEFAULT_LEVEL_NO = 20  # loguru's INFO, the default of BoostOptions.log_level
_file_sinks: dict[str, int] = {}
# queue name -> lowest level number asked for by a booster of that queue in this process
_queue_levels: dict[str, int] = {}


def level_number(level: str) -> int:
    """loguru's number for a level name (``"info"`` is read as ``"INFO"``).

    Raises ``ConfigurationError`` naming ``log_level`` when loguru knows no such level.
    """
    for name in (level, level.upper()):
        try:
            return int(logger.level(name).no)
        except (ValueError, TypeError):
            continue
    raise ConfigurationError(
        f"log_level must be a loguru level name (DEBUG, INFO, WARNING, ERROR, ...), got {level!r}"
    )


def set_queue_level(queue_name: str, level: str) -> None:
    """Let geboost's records about ``queue_name`` at ``level`` and above through.

    Two boosters of one queue in one process (a producer and a consumer, say) share the more
    verbose of their levels: a record is shown if either asked for it.
    """
    number = level_number(level)
    _queue_levels[queue_name] = min(number, _queue_levels.get(queue_name, number))


def _threshold(queue_name: str) -> int:
    known = _queue_levels.get(queue_name)
    if known is not None:
        return known
    # A record of no single booster (a publisher shared by several queues): shown if any
    # booster of the process asked for its level.
    return min(_queue_levels.values(), default=_DEFAULT_LEVEL_NO)


class QueueLogger:
    """loguru's logger for one queue, minus the records below that queue's ``log_level``.

    The methods are loguru's (``message.format(*args, **kwargs)`` happens only for records
    that pass); records name the caller's module and line, not this class.
    """

    __slots__ = ("_bound", "_queue")

    def __init__(self, bound: Logger, queue_name: str) -> None:
        self._bound = bound
        self._queue = queue_name

    def bind(self, **extra: Any) -> QueueLogger:
        return QueueLogger(self._bound.bind(**extra), self._queue)

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._emit("DEBUG", 10, False, message, args, kwargs)

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._emit("INFO", 20, False, message, args, kwargs)

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._emit("WARNING", 30, False, message, args, kwargs)

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._emit("ERROR", 40, False, message, args, kwargs)

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        """An ERROR record with the traceback of the exception being handled."""
        self._emit("ERROR", 40, True, message, args, kwargs)

    def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._emit("CRITICAL", 50, False, message, args, kwargs)

    def _emit(
        self,
        level: str,
        number: int,
        with_traceback: bool,
        message: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if number < _threshold(self._queue):
            return
        # depth=2: the record names whoever called debug()/info()/..., two frames up.
        self._bound.opt(depth=2, exception=with_traceback or None).log(
            level, message, *args, **kwargs
        )


def queue_logger(queue_name: str) -> QueueLogger:
    """A logger whose records carry ``queue`` and ``task_id`` (``-`` until bound), and which
    drops records below the ``log_level`` of the queue's booster (``set_queue_level``).

    Queue and task id are also written at the front of the message, so that they show in ANY
    handler's format, including loguru's default console one, not only in sinks that print
    ``extra``.
    """
    bound = logger.bind(geboost=True, queue=queue_name, task_id="-").patch(_prefix)
    return QueueLogger(bound, queue_name)


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
            level=level_number(level),
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

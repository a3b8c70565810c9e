"""``AsyncResult``: a pushed task's status and outcome, read from the state store; with
``TaskFailed`` and ``ResultTimeout``.

A worker of a booster with ``result_ttl_s > 0`` writes each task's status under
``geboost:<queue>:result:<task_id>`` (see ``geboost.state.keys``): ``pending`` at push,
``started``, ``retrying``, then ``succeeded`` with the return value (msgspec JSON) or ``failed``
with the error once dead-lettered, each for ``result_ttl_s``. A final outcome is also announced
on the store's notification channel, which is what ``get`` blocks on: it never polls.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from geboost.errors import ConfigurationError, GeboostError
from geboost.state.base import StateStore
from geboost.state.keys import done_channel, result_key

__all__ = [
    "STATUSES",
    "AsyncResult",
    "Outcome",
    "ResultTimeout",
    "TaskFailed",
    "decode_outcome",
    "encode_outcome",
    "return_decoder",
]

R = TypeVar("R")

STATUSES = ("pending", "started", "retrying", "succeeded", "failed", "unknown")
_FINAL = ("succeeded", "failed")


class TaskFailed(GeboostError):
    """The task was dead-lettered: ``error_type`` and ``message`` of its last failure, and the
    worker's formatted ``traceback`` (its tail when long)."""

    def __init__(self, task_id: str, error_type: str, message: str, traceback: str) -> None:
        super().__init__(f"task {task_id} failed: {error_type}: {message}")
        self.task_id = task_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class ResultTimeout(GeboostError, TimeoutError):
    """``AsyncResult.get(timeout_s)`` found no outcome in time (the task may still finish)."""


class Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The stored record of one task (JSON). ``value`` is the return value's JSON."""

    status: str
    value: msgspec.Raw = msgspec.Raw(b"null")
    error_type: str = ""
    message: str = ""
    traceback: str = ""


_encoder = msgspec.json.Encoder()
_outcome_decoder = msgspec.json.Decoder(Outcome)


def encode_outcome(outcome: Outcome) -> bytes:
    return _encoder.encode(outcome)


def decode_outcome(raw: bytes | None) -> Outcome | None:
    """The record, or None if absent or not a record (then the status reads "unknown")."""
    if raw is None:
        return None
    try:
        return _outcome_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def return_decoder(func: Callable[..., Any]) -> msgspec.json.Decoder[Any]:
    """A decoder to the function's return annotation, as the codec does for parameters: a
    ``datetime``, ``Decimal``, Struct, dataclass... comes back as that type; no annotation (or
    one msgspec cannot convert) gives plain JSON."""
    try:
        hint = typing.get_type_hints(func, include_extras=True).get("return", Any)
    except Exception:
        hint = Any
    if hint is None or hint is type(None):
        hint = Any
    try:
        return msgspec.json.Decoder(hint)
    except Exception:
        return msgspec.json.Decoder()


class AsyncResult(Generic[R]):
    """What ``push`` returns: the task's id, and (with ``result_ttl_s > 0``) its outcome.

    ``deduplicated`` is True when the push was not sent because an identical call succeeded
    within ``dedupe_ttl_s``; ``task_id`` is then the earlier task's id, whose result ``get``
    returns.
    """

    __slots__ = ("_decoder", "_queue_name", "_store", "deduplicated", "task_id")

    def __init__(
        self,
        task_id: str,
        *,
        queue_name: str = "",
        store: StateStore | None = None,
        decoder: msgspec.json.Decoder[Any] | None = None,
        deduplicated: bool = False,
    ) -> None:
        self.task_id = task_id
        self.deduplicated = deduplicated
        self._queue_name = queue_name
        self._store = store
        self._decoder = decoder

    def __repr__(self) -> str:
        extra = ", deduplicated=True" if self.deduplicated else ""
        return f"AsyncResult(task_id={self.task_id!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return bool(self.task_id == other.task_id)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.task_id)

    def _need_store(self) -> StateStore:
        if self._store is None:
            raise ConfigurationError(
                f"queue {self._queue_name!r} has no state store to read results from: set "
                "state_url (and result_ttl_s > 0 on the workers)"
            )
        return self._store

    def _read(self) -> Outcome | None:
        return decode_outcome(self._need_store().get(result_key(self._queue_name, self.task_id)))

    def status(self) -> str:
        """One of ``STATUSES``: pending, started, retrying, succeeded, failed, or unknown
        (expired, never stored, or results off). Raises ``StateStoreError``."""
        if self._store is None:
            return "unknown"
        outcome = self._read()
        return outcome.status if outcome is not None else "unknown"

    def ready(self) -> bool:
        """True once the task succeeded or failed (for good)."""
        return self.status() in _FINAL

    def get(self, timeout_s: float | None = None) -> R:
        """Block until the task's outcome is stored and return its value, converted to the
        function's return annotation.

        Raises ``TaskFailed`` if it was dead-lettered, ``ResultTimeout`` after ``timeout_s``
        (None = no limit), ``ConfigurationError`` without a state store, ``StateStoreError``.
        Waits on the store's notification, never in a polling loop; returns at once if done.
        """
        store = self._need_store()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        key = result_key(self._queue_name, self.task_id)
        with store.watch(done_channel(), key) as watch:
            while True:
                outcome = decode_outcome(store.get(key))  # after watching: nothing is missed
                if outcome is not None and outcome.status in _FINAL:
                    return self._unpack(outcome)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(
                        f"task {self.task_id} of queue {self._queue_name!r}: no result within "
                        f"{timeout_s:g} s (status {outcome.status if outcome else 'unknown'})"
                    )
                watch.wait(remaining)

    def _unpack(self, outcome: Outcome) -> R:
        if outcome.status == "failed":
            raise TaskFailed(self.task_id, outcome.error_type, outcome.message, outcome.traceback)
        decoder = self._decoder or msgspec.json.Decoder()
        try:
            return typing.cast(R, decoder.decode(outcome.value))
        except msgspec.DecodeError as exc:
            raise TaskFailed(
                self.task_id,
                "DecodeError",
                f"the stored result does not fit the return annotation: {exc}",
                "",
            ) from None

"""``TaskRecorder``: the engine's hooks for results, task status and dedupe marks.

Writes are batched: hooks only put ``(key, value, ttl)`` in a dict (a later status of the same
task replaces an earlier one not yet written, so a quick call costs one write, not two) and one
writer greenlet sends what accumulated in one round trip (``StateStore.write_batch``) while the
next batch gathers. A failed write is logged and tried again a second later, newer values
winning. Results are written after the call and independently of its ack: a worker killed in
between may leave a task acked whose result was never stored (its status then stays
``started`` until it expires).
"""

from __future__ import annotations

import math
import time
from typing import Any

import gevent
import msgspec
from gevent.event import Event

from geboost.errors import StateStoreError
from geboost.log import QueueLogger
from geboost.message import TaskMessage
from geboost.results import Outcome, encode_outcome
from geboost.state.base import StateStore
from geboost.state.keys import dedupe_key, done_channel, result_key

__all__ = ["TaskRecorder"]

_RETRY_WRITE_S = 1.0
_BUSY_GAP_S = 0.0005  # woken this soon after a write: the writer is busy (see _write_loop)
_GATHER_S = 0.001  # how long a busy writer lets the next batch gather
_value_encoder = msgspec.json.Encoder()
_STARTED = encode_outcome(Outcome(status="started"))
_RETRYING = encode_outcome(Outcome(status="retrying"))
_SUCCEEDED_NONE = encode_outcome(Outcome(status="succeeded"))  # the common "return None"
PENDING = encode_outcome(Outcome(status="pending"))


class TaskRecorder:
    """One engine's writer of task outcomes (``result_ttl_s``) and dedupe marks
    (``dedupe_ttl_s``); see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        queue_name: str,
        *,
        result_ttl_s: float,
        dedupe_ttl_s: float,
        log: QueueLogger,
    ) -> None:
        self.store = store
        self.queue_name = queue_name
        self.result_ttl_s = result_ttl_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self._log = log
        self._sets: dict[str, tuple[bytes, float]] = {}
        self._notices: list[tuple[str, str]] = []
        self._done_channel = done_channel()
        self._last_key = ("", "")  # (task id, its result key): see _result_key
        self._wake = Event()
        self._idle = Event()
        self._idle.set()
        self._writer: gevent.Greenlet[Any, None] | None = None

    # ----------------------------------------------------------------- hooks (never block)
    def started(self, message: TaskMessage) -> None:
        if self.result_ttl_s:
            self._put(self._result_key(message.task_id), _STARTED, self.result_ttl_s)

    def retrying(self, message: TaskMessage) -> None:
        if self.result_ttl_s:
            self._put(self._result_key(message.task_id), _RETRYING, self.result_ttl_s)

    def succeeded(self, message: TaskMessage, value: Any) -> None:
        if self.result_ttl_s:
            self._final(message.task_id, _succeeded(value))
        if self.dedupe_ttl_s and message.fingerprint:
            key = dedupe_key(self.queue_name, message.fingerprint)
            self._put(key, message.task_id.encode(), self.dedupe_ttl_s)

    def failed(self, task_id: str, error_type: str, text: str, traceback: str) -> None:
        if self.result_ttl_s and task_id:
            outcome = Outcome(
                status="failed", error_type=error_type, message=text, traceback=traceback
            )
            self._final(task_id, encode_outcome(outcome))

    # ----------------------------------------------------------------- dedupe at consume
    def done_before(self, message: TaskMessage) -> str | None:
        """The id of a task with this message's fingerprint that succeeded within
        ``dedupe_ttl_s`` (one store read), or None. Raises ``StateStoreError``."""
        if not (self.dedupe_ttl_s and message.fingerprint):
            return None
        key = dedupe_key(self.queue_name, message.fingerprint)
        pending = self._sets.get(key)  # succeeded here, not written yet
        if pending is not None:
            return pending[0].decode()
        earlier = self.store.get(key)
        return earlier.decode() if earlier is not None else None

    def skipped(self, message: TaskMessage, earlier_id: str) -> None:
        """``message`` is not run: its fingerprint succeeded as ``earlier_id``. With results
        on, its own result is a copy of the earlier one (when that is still stored)."""
        if not self.result_ttl_s or earlier_id == message.task_id:
            return
        try:
            earlier = self.store.get(result_key(self.queue_name, earlier_id))
        except StateStoreError as exc:
            self._log.warning("could not read the earlier result {}: {}", earlier_id, exc)
            return
        if earlier is not None:
            self._final(message.task_id, earlier)

    # ----------------------------------------------------------------- the writer
    def _final(self, task_id: str, record: bytes) -> None:
        key = self._result_key(task_id)
        self._put(key, record, self.result_ttl_s)
        self._notices.append((self._done_channel, key))

    def _result_key(self, task_id: str) -> str:
        # A call's statuses come one after another (started, then its outcome, with nothing
        # in between for a quick call): the last key made is usually the one wanted again.
        last_id, last_key = self._last_key
        if task_id != last_id:
            last_key = result_key(self.queue_name, task_id)
            self._last_key = (task_id, last_key)
        return last_key

    def _put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._sets[key] = (value, ttl_s)
        if not self._wake.is_set():
            self._idle.clear()
            self._wake.set()
            if self._writer is None or self._writer.dead:
                self._writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        last_write = -math.inf
        while True:
            self._wake.wait()
            if time.monotonic() - last_write < _BUSY_GAP_S:
                # Busy: statuses came while the last batch was on its way, so let this one
                # gather for a moment (a write per ~25 statuses cost a third of a Redis
                # results-on worker's time; now ~3x fewer writes). A status after a quiet
                # moment (an rpc caller waiting) still goes at once.
                gevent.sleep(_GATHER_S)
            self._wake.clear()
            written = self._write_once()
            last_write = time.monotonic()
            if not written:
                gevent.sleep(_RETRY_WRITE_S)
                self._wake.set()
            elif not self._sets and not self._notices:
                self._idle.set()

    def _write_once(self) -> bool:
        sets, self._sets = self._sets, {}
        notices, self._notices = self._notices, []
        if not sets and not notices:
            return True
        try:
            self.store.write_batch([(k, v, t) for k, (v, t) in sets.items()], notices)
        except StateStoreError as exc:
            self._log.warning(
                "could not store {} task status(es): {}; retrying in {:g} s",
                len(sets),
                exc,
                _RETRY_WRITE_S,
            )
            sets.update(self._sets)  # values put meanwhile are newer
            self._sets = sets
            self._notices[:0] = notices
            return False
        return True

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every status put so far to be written; then stop the
        writer. True if all were written."""
        if self._writer is None:
            return True
        done = bool(self._idle.wait(timeout_s))
        self._writer.kill(block=True, timeout=1)
        self._writer = None
        self._wake.clear()  # _put starts a new writer if anything comes after this
        if self._sets or self._notices:
            done = self._write_once()  # put between the writer's last batch and the kill
        if not done:
            self._log.warning("{} task status(es) could not be stored before stop", len(self._sets))
        return done


def _succeeded(value: Any) -> bytes:
    if value is None:
        return _SUCCEEDED_NONE
    try:
        raw = msgspec.Raw(_value_encoder.encode(value))
        return encode_outcome(Outcome(status="succeeded", value=raw))
    except Exception as exc:  # no JSON form: the caller learns why from get()
        return encode_outcome(
            Outcome(
                status="failed",
                error_type="EncodeError",
                message=f"the return value has no JSON form: {type(exc).__name__}: {exc}",
            )
        )

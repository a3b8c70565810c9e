"""The wire format: a msgspec envelope encoded as JSON, with one reused encoder and decoder.

A task on the wire is a JSON object::

    {"task_id": "9f1c...", "args": [1, 2], "publish_time": 1764320000.5}

``kwargs``, ``due_time``, ``expires_at`` and ``priority`` are written only when set.

Only ``task_id`` is required; unknown fields are ignored and every field added later gets a
default, so producers in other languages and workers of other versions read each other's
messages. Pickle is never used.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import msgspec

from geboost.errors import DecodeError, EncodeError

__all__ = [
    "DeadLetter",
    "TaskMessage",
    "decode_dead_letter",
    "decode_task",
    "encode",
    "fingerprint",
    "make_task",
    "new_task_id",
    "not_a_task",
]


class TaskMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One call of the consuming function.

    A booster's codec may return a subclass whose ``args`` is a tuple of the converted
    arguments (one decode for the whole call); use ``args`` as a sequence.

    Fields left at their default are not written (``omit_defaults``): a plain push carries no
    scheduling fields at all, and a reader of any version fills in the defaults.
    """

    task_id: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    publish_time: float = 0.0
    fingerprint: str = ""
    """The call's dedupe fingerprint (``dedupe_ttl_s`` > 0 only; empty otherwise)."""
    due_time: float = 0.0
    """Unix time (producer's clock) before which the task must not start; 0 = at once."""
    expires_at: float = 0.0
    """Unix time after which the task is dead-lettered as expired instead of run; 0 = never
    (the consumer's ``msg_expire_s`` still applies)."""
    priority: int = 0
    """0..9, higher first; the broker orders by it, the envelope only remembers it."""


class DeadLetter(msgspec.Struct, kw_only=True):
    """What lands in ``<queue_name>.dlq`` after the last failed attempt.

    ``body`` is the original message exactly as it was received (as text), so that it can be put
    back on the queue unchanged even when it could not be decoded.
    """

    queue_name: str
    body: str
    error: str
    attempts: int
    failed_at: float
    task_id: str = ""
    traceback: str = ""
    """The formatted traceback of the last attempt (its tail, when long); empty if none."""


_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(TaskMessage)
_dead_decoder = msgspec.json.Decoder(DeadLetter)


def new_task_id() -> str:
    """32 random hex digits. ``random`` (reseeded after fork) rather than ``uuid4``: ids need
    to be unique, not secret, and uuid4 was half the cost of a push_many."""
    return f"{random.getrandbits(128):032x}"


def encode(obj: TaskMessage | DeadLetter) -> bytes:
    """Encode an envelope; raises ``EncodeError`` when an argument has no JSON form."""
    try:
        return _encoder.encode(obj)
    except Exception as exc:
        # Not only TypeError: a circular or very deep value raises RecursionError, a lone
        # surrogate UnicodeEncodeError. Whatever it is, the push fails with our error.
        raise EncodeError(
            f"cannot encode task arguments as JSON: {type(exc).__name__}: {exc}"
        ) from exc


_canonical = msgspec.json.Encoder(order="deterministic")


def fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The dedupe fingerprint of a call: a hash of the canonical msgspec JSON of
    ``[args, kwargs]`` (dict keys sorted), so equal calls match whatever the keyword order.
    Raises ``EncodeError`` for arguments with no JSON form."""
    try:
        canonical = _canonical.encode([list(args), kwargs])
    except Exception as exc:
        raise EncodeError(f"cannot fingerprint the call: {type(exc).__name__}: {exc}") from exc
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def make_task(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskMessage:
    return TaskMessage(
        task_id=new_task_id(), args=list(args), kwargs=kwargs, publish_time=time.time()
    )


def decode_task(body: bytes) -> TaskMessage:
    """Decode a task body; raises ``DecodeError`` naming what is wrong."""
    try:
        return _task_decoder.decode(body)
    except Exception as exc:
        raise not_a_task(exc, body) from exc


class _TaskId(msgspec.Struct):
    task_id: str = ""


_task_id_decoder = msgspec.json.Decoder(_TaskId)


def not_a_task(exc: Exception, body: bytes) -> DecodeError:
    """The ``DecodeError`` for a body that is not a task envelope, with its ``task_id`` when
    that much can be read (so that the dead letter and its log line name the task).

    Any ``Exception`` counts, not only msgspec's: invalid UTF-8 inside a JSON string raises
    ``UnicodeDecodeError`` and a deeply nested document ``RecursionError``, and a message that
    escaped the decoder that way would never be acked nor dead-lettered.
    """
    error = DecodeError(f"not a geboost task message: {_describe(exc)}")
    try:
        error.task_id = _task_id_decoder.decode(body).task_id
    except Exception:
        pass  # not even that: the letter has no task id
    return error


def decode_dead_letter(body: bytes) -> DeadLetter:
    """Decode a dead letter; raises ``DecodeError`` for anything else (never another error)."""
    try:
        return _dead_decoder.decode(body)
    except Exception as exc:
        raise DecodeError(f"not a geboost dead letter: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    """msgspec's own errors speak for themselves; others get their type name in front."""
    if isinstance(exc, (msgspec.DecodeError, msgspec.ValidationError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

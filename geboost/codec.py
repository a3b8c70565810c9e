"""``CallCodec``: one booster's calls to and from the wire, built once per booster.

The producer side checks a call against the consuming function's signature and encodes it; the
consumer side decodes a body and converts each argument to its parameter's annotation with
msgspec, so that a ``datetime``, ``Decimal``, ``bytes``, ``set[int]``, dataclass, ``Struct``...
arrives as the same type and value that was pushed. Both ends share one codec object per
booster: the signature is inspected, and the typed decoders built, once.

Parameters without an annotation (or annotated ``Any``) carry plain JSON. A value whose JSON
form would not come back equal (NaN, bytes, a set, a tuple, ``{1: "a"}``, a datetime ...) is
refused at push with ``EncodeError`` unless ``strict_args=False``, which lets the lossy form
through with one warning per parameter.
"""

from __future__ import annotations

import inspect
import math
import reprlib
import typing
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi

from geboost.errors import DecodeError, EncodeError
from geboost.log import queue_logger
from geboost.message import TaskMessage, decode_task, make_task, not_a_task

__all__ = ["CallCodec", "Timing", "signature_of"]

Timing = tuple[float, float, int]
"""(due_time, expires_at, priority) of one push, as written in the envelope."""

_encoder = msgspec.json.Encoder()
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
# Values whose JSON form always comes back equal (a lone surrogate in a str fails encoding).
_EXACT_SCALARS = frozenset({str, int, bool, type(None)})
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


class _RawTask(msgspec.Struct, kw_only=True):
    """The envelope with each argument left as raw JSON, converted later by its parameter."""

    task_id: str
    args: list[msgspec.Raw] = msgspec.field(default_factory=list)
    kwargs: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    publish_time: float = 0.0
    fingerprint: str = ""
    due_time: float = 0.0
    expires_at: float = 0.0
    priority: int = 0


_raw_decoder = msgspec.json.Decoder(_RawTask)


class _Param:
    """How one parameter's values travel: its decoder and the checks a push makes."""

    __slots__ = ("checked", "decoder", "hint", "label", "name", "scan_floats", "typed")

    def __init__(self, name: str, hint: Any) -> None:
        self.name = name
        self.hint: Any = Any  # what the consumer converts to
        self.typed = False  # converted to its annotation on the consumer side
        self.checked = True  # a push compares the value with what would arrive
        self.scan_floats = False  # a push refuses NaN / inf (JSON turns them into null)
        self.label = "plain JSON (no annotation)"
        self.decoder: msgspec.json.Decoder[Any] = _any_decoder
        if hint is inspect.Parameter.empty or hint is Any or hint is object:
            return
        try:
            info = mi.type_info(hint)
            decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(hint)
        except Exception as exc:  # msgspec cannot handle this annotation: plain JSON then
            self.label = f"plain JSON (msgspec cannot convert {_type_label(hint)}: {exc})"
            return
        kinds = {type(node) for node in _walk(info)}
        if mi.CustomType in kinds:
            self.label = f"plain JSON (msgspec cannot convert {_type_label(hint)})"
            return
        self.typed = True
        self.hint = hint
        self.decoder = decoder
        self.label = _type_label(hint)
        # Only a value of a closed type (no Any inside) is sure to arrive as it left.
        self.checked = mi.AnyType in kinds
        self.scan_floats = not self.checked and mi.FloatType in kinds


class CallCodec:
    """Encodes calls of ``func`` for the wire and decodes them back, typed, for ``func``."""

    def __init__(
        self, func: Callable[..., Any], *, queue_name: str, strict_args: bool = True
    ) -> None:
        self.queue_name = queue_name
        self.strict_args = strict_args
        self.signature = signature_of(func)
        self._plain_arity = _plain_positional_arity(self.signature)
        self._warned: set[str] = set()
        self._positional: list[_Param] = []
        self._keyword: dict[str, _Param] = {}
        self._var_positional: _Param | None = None
        self._var_keyword: _Param | None = None
        self._fast_decoder: msgspec.json.Decoder[Any] | None = None
        self._unknown = _Param("", inspect.Parameter.empty)  # fails binding later
        if self.signature is not None:
            self._build(func, self.signature)
        params = [*self._positional, *self._keyword.values()]
        for extra in (self._var_positional, self._var_keyword):
            if extra is not None:
                params.append(extra)
        self._any_typed = any(p.typed for p in params)
        self._any_checked = any(p.checked or p.scan_floats for p in params)

    def _build(self, func: Callable[..., Any], signature: inspect.Signature) -> None:
        hints = _type_hints(func, signature)
        kind = inspect.Parameter
        for p in signature.parameters.values():
            hint = hints.get(p.name, inspect.Parameter.empty)
            if p.default is None and hint is not inspect.Parameter.empty:
                # ``x: int = None`` means "an int or None" to its author (and to Python < 3.11's
                # get_type_hints): None pushed explicitly must not be dead-lettered.
                hint = typing.Optional[hint]  # noqa: UP045 (a runtime value, not an annotation)
            param = _Param(p.name, hint)
            if p.kind is kind.VAR_POSITIONAL:
                self._var_positional = param
            elif p.kind is kind.VAR_KEYWORD:
                self._var_keyword = param
            else:
                if p.kind is not kind.KEYWORD_ONLY:
                    self._positional.append(param)
                if p.kind is not kind.POSITIONAL_ONLY:
                    self._keyword[p.name] = param
        if self._plain_arity > 0 and any(p.typed for p in self._positional):
            # The common call, f(a, b, c) pushed positionally, is converted by one decode into
            # a TaskMessage whose args are the typed tuple; any other shape of call (keywords,
            # defaults left out) or a misfit takes the per-argument path, which names the
            # parameter in its error.
            generic_tuple: Any = tuple
            fast = msgspec.defstruct(
                "_TypedTask",
                [("args", generic_tuple[tuple(p.hint for p in self._positional)])],
                bases=(TaskMessage,),
                kw_only=True,
            )
            self._fast_decoder = msgspec.json.Decoder(fast)

    # ----------------------------------------------------------------- producing
    def encode_call(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        task_id: str = "",
        fingerprint: str = "",
        timing: Timing | None = None,
    ) -> tuple[bytes, str]:
        """The body of one call and its task id; ``timing`` fills the envelope's due time,
        expiry and priority (``push_with``).

        Raises ``EncodeError`` (also a ``TypeError``) when the call does not fit the signature,
        when an argument has no JSON form, or when, with ``strict_args``, an argument would not
        arrive equal to what was pushed; nothing is sent in any of these cases.
        """
        # Binding costs about a microsecond per call; for the common plain signature the count
        # of positional arguments says the same thing.
        plain_fit = not kwargs and len(args) == self._plain_arity
        if self.signature is not None and not plain_fit:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise EncodeError(f"{self.queue_name}: push{_repr(args)}: {exc}") from None
        message = make_task(args, kwargs)
        if task_id:
            message.task_id = task_id
        message.fingerprint = fingerprint
        if timing is not None:
            message.due_time, message.expires_at, message.priority = timing
        try:
            body = _encoder.encode(message)
        except Exception as exc:
            raise self._encode_error(args, kwargs, exc) from exc
        # Exact scalars (str, int, bool, None) arrive as they left whatever the parameter.
        if self._any_checked and (kwargs or not _EXACT_SCALARS.issuperset(map(type, args))):
            for param, value in self._pairs(args, kwargs):
                if param.checked:
                    self._check_round_trip(param, value)
                elif param.scan_floats and b"null" in body:
                    self._check_finite(param, value)
        return body, message.task_id

    def _pairs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[_Param, Any]]:
        for i, value in enumerate(args):
            yield self._param_at(i), value
        for name, value in kwargs.items():
            yield self._param_named(name), value

    def _encode_error(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> EncodeError:
        """An ``EncodeError`` naming the first argument that has no JSON form."""
        for param, value in self._pairs(args, kwargs):
            try:
                _encoder.encode(value)
            except Exception as inner:
                return EncodeError(
                    f"{self.queue_name}: argument {param.name!r} = {_repr(value)} cannot be "
                    f"encoded as JSON: {type(inner).__name__}: {inner}"
                )
        return EncodeError(
            f"{self.queue_name}: cannot encode the arguments as JSON: {type(exc).__name__}: {exc}"
        )

    def _check_round_trip(self, param: _Param, value: Any) -> None:
        kind = type(value)
        if kind in _EXACT_SCALARS or (kind is float and math.isfinite(value)):
            return
        try:
            arrived = param.decoder.decode(_encoder.encode(value))
            # Equal and of the same kind: an IntEnum arriving as int passes, a tuple arriving
            # as a list does not.
            same = isinstance(value, type(arrived)) and bool(arrived == value)
        except Exception as exc:
            arrived, same = f"<{type(exc).__name__}: {exc}>", False
        if not same:
            self._lossy(
                param,
                f"argument {param.name!r} = {_repr(value)} would arrive as {_repr(arrived)} "
                f"({param.label}); annotate the parameter with its type",
            )

    def _check_finite(self, param: _Param, value: Any) -> None:
        if _has_non_finite_float(value):
            self._lossy(
                param,
                f"argument {param.name!r} = {_repr(value)} holds NaN or infinity, which JSON "
                "carries as null; pass a Decimal or a string",
            )

    def _lossy(self, param: _Param, why: str) -> None:
        if self.strict_args:
            raise EncodeError(f"{self.queue_name}: {why} (or set strict_args=False)")
        if param.name not in self._warned:
            self._warned.add(param.name)
            queue_logger(self.queue_name).warning(
                "{}; sent in its lossy JSON form (strict_args=False), warned once", why
            )

    # ----------------------------------------------------------------- consuming
    def decode(self, body: bytes) -> TaskMessage:
        """The call a body carries, ready for ``func(*message.args, **message.kwargs)``, each
        argument converted to its parameter's annotation.

        Raises ``DecodeError`` for anything that can never run: a body that is not a task
        envelope (whatever its bytes), an argument that does not fit its annotation, or
        arguments that do not bind to the signature. The engine dead-letters such messages at
        once, without retries. No other exception leaves this method.
        """
        if not self._any_typed:
            message = decode_task(body)
            self._check_binds(message)
            return message
        fast = self._fast_decoder
        if fast is not None:
            try:
                got = fast.decode(body)
            except Exception:
                pass  # another shape of call, or an error the per-argument path will name
            else:
                if not got.kwargs:
                    return typing.cast(TaskMessage, got)
        return self._decode_per_argument(body)

    def _decode_per_argument(self, body: bytes) -> TaskMessage:
        try:
            raw = _raw_decoder.decode(body)
        except Exception as exc:
            raise not_a_task(exc, body) from exc
        message = TaskMessage(
            task_id=raw.task_id,
            publish_time=raw.publish_time,
            fingerprint=raw.fingerprint,
            due_time=raw.due_time,
            expires_at=raw.expires_at,
            priority=raw.priority,
        )
        message.args = [self._convert(self._param_at(i), r, raw) for i, r in enumerate(raw.args)]
        message.kwargs = {
            k: self._convert(self._param_named(k), r, raw) for k, r in raw.kwargs.items()
        }
        self._check_binds(message)
        return message

    def _convert(self, param: _Param, raw: msgspec.Raw, envelope: _RawTask) -> Any:
        try:
            return param.decoder.decode(raw)
        except Exception as exc:
            # msgspec says where inside the value: "... - at `$[2]`" becomes "at `xs[2]`".
            where = str(exc).replace("`$", f"`{param.name}")
            error = DecodeError(
                f"argument {param.name!r} does not fit its annotation {param.label}: {where}"
            )
            error.task_id = envelope.task_id
            raise error from None

    def _check_binds(self, message: TaskMessage) -> None:
        if self.signature is None or (
            not message.kwargs and len(message.args) == self._plain_arity
        ):
            return
        try:
            self.signature.bind(*message.args, **message.kwargs)
        except TypeError as exc:
            error = DecodeError(f"arguments do not fit the function: {exc}")
            error.task_id = message.task_id
            raise error from None

    def _param_at(self, index: int) -> _Param:
        if index < len(self._positional):
            return self._positional[index]
        return self._var_positional or self._unknown

    def _param_named(self, name: str) -> _Param:
        return self._keyword.get(name) or self._var_keyword or self._unknown


def signature_of(func: Callable[..., Any]) -> inspect.Signature | None:
    """The function's signature, or None for callables inspect cannot read (some builtins)."""
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _type_hints(func: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """Each parameter's annotation, string annotations resolved (``from __future__ import
    annotations``), ``Annotated`` kept so that msgspec's ``Meta`` constraints apply."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    if not hints:
        # Callable objects and partials: inspect resolves what get_type_hints cannot reach.
        try:
            signature = inspect.signature(func, eval_str=True)
        except Exception:
            pass
        hints = {
            p.name: p.annotation
            for p in signature.parameters.values()
            if not isinstance(p.annotation, str)
        }
    return {name: hint for name, hint in hints.items() if name in signature.parameters}


def _walk(info: mi.Type) -> Iterator[mi.Type]:
    """Every node of a msgspec type tree, each once (recursive Structs end)."""
    seen: set[int] = set()
    stack: list[Any] = [info]
    while stack:
        node = stack.pop()
        if isinstance(node, mi.Field):
            stack.append(node.type)
        elif isinstance(node, (tuple, list)):
            stack.extend(node)
        elif isinstance(node, mi.Type) and id(node) not in seen:
            seen.add(id(node))
            yield node
            stack.extend(getattr(node, f) for f in node.__struct_fields__)


def _has_non_finite_float(value: Any) -> bool:
    try:
        stack = [msgspec.to_builtins(value)]
    except Exception:
        return False
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _type_label(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _repr(value: Any) -> str:
    """A short repr that cannot fail (circular and very deep values included)."""
    try:
        return _short.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _plain_positional_arity(signature: inspect.Signature | None) -> int:
    """The number of parameters when all are required positional ones, else -1."""
    if signature is None:
        return -1
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = signature.parameters.values()
    if all(p.kind in plain and p.default is inspect.Parameter.empty for p in params):
        return len(signature.parameters)
    return -1

"""CallCodec: typed arguments that round-trip, strict and lossy pushes, errors that are ours,
and a decoder that turns any bytes into a message or a DecodeError (issue 8 case 2, issue 9)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Optional, TypedDict

import msgspec
import pytest

from geboost import (
    Booster,
    BoostOptions,
    ConfigurationError,
    DecodeError,
    EncodeError,
    GeboostError,
    TaskMessage,
)
from geboost.codec import CallCodec
from geboost.message import decode_dead_letter, decode_task
from tests.support import memory_booster, wait_for


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: set[str]


class Order(msgspec.Struct):
    id: uuid.UUID
    lines: list[tuple[str, decimal.Decimal]]
    due: dt.date | None = None


class Event(TypedDict):
    name: str
    at: dt.datetime


UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 28, 23, 59, 58, 123456, tzinfo=UTC)

# One case per type family of issue 9 s1: (annotation, value pushed).
TYPED_CASES: list[tuple[Any, Any]] = [
    (dt.datetime, NOW),
    (dt.datetime, dt.datetime(2026, 1, 2, 3, 4, 5)),  # naive stays naive
    (dt.date, dt.date(2026, 2, 28)),
    (dt.time, dt.time(23, 59, 1, 5)),
    (dt.timedelta, dt.timedelta(days=2, seconds=3, microseconds=4)),
    (decimal.Decimal, decimal.Decimal("12.340")),
    (uuid.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (bytes, b"\x00\x01abc\xff"),
    (Color, Color.BLUE),
    (Level, Level.HIGH),
    (tuple[int, str, dt.date], (1, "a", dt.date(2026, 1, 1))),
    (tuple[int, ...], (1, 2, 3)),
    (set[int], {3, 1, 2}),
    (frozenset[str], frozenset({"a", "b"})),
    (dict[int, str], {1: "a", 2: "b"}),
    (dict[uuid.UUID, list[bytes]], {uuid.UUID(int=7): [b"x", b""]}),
    (Point, Point(1, 2.5, {"a"})),
    (Order, Order(uuid.UUID(int=1), [("pen", decimal.Decimal("1.10"))], dt.date(2026, 3, 1))),
    (Event, Event(name="launch", at=NOW)),
    (Optional[dt.datetime], None),  # noqa: UP045 (the spelling under test)
    (Optional[dt.datetime], NOW),  # noqa: UP045
    (int | dt.date, dt.date(2026, 1, 1)),
    (int | dt.date, 5),
    (list[dict[int, set[bytes]]], [{1: {b"a"}}, {}]),
    (float, 2.5),
    (Annotated[int, msgspec.Meta(ge=0)], 7),
]


def _booster(func: Callable[..., Any], **options: Any) -> Booster[Any, Any]:
    """A memory booster whose stop() is quick (a short fetch wait)."""
    booster: Booster[Any, Any] = memory_booster(func, poll_timeout_s=0.05, **options)
    return booster


def _func(hint: Any, got: list[Any]) -> Callable[..., None]:
    def consume(x: Any) -> None:
        got.append(x)

    consume.__annotations__ = {"x": hint, "return": None}
    return consume


@pytest.fixture
def boosters() -> Iterator[list[Booster[Any, Any]]]:
    made: list[Booster[Any, Any]] = []
    yield made
    for b in made:
        b.stop(timeout_s=2)


@pytest.mark.parametrize(("hint", "value"), TYPED_CASES, ids=[repr(c[0]) for c in TYPED_CASES])
def test_typed_argument_arrives_as_the_same_type_and_value(
    hint: Any, value: Any, boosters: list[Booster[Any, Any]]
) -> None:
    got: list[Any] = []
    b = _booster(_func(hint, got), max_retries=0)
    boosters.append(b)
    b.push(value)
    b.push(x=value)  # the keyword form takes the per-argument path
    b.consume()
    assert wait_for(lambda: len(got) == 2, 10)
    assert b.dead_letter_count() == 0
    for arrived in got:
        assert arrived == value
        assert type(arrived) is type(value)


def test_string_annotations_varargs_and_kwargs_are_converted(
    boosters: list[Booster[Any, Any]],
) -> None:
    got: list[Any] = []

    # ``from __future__ import annotations`` makes these strings: get_type_hints resolves them.
    def consume(when: dt.datetime, *amounts: decimal.Decimal, **ids: uuid.UUID) -> None:
        got.append((when, amounts, ids))

    assert isinstance(consume.__annotations__["when"], str)
    b = _booster(consume, max_retries=0)
    boosters.append(b)
    b.push(NOW, decimal.Decimal("1.5"), decimal.Decimal("2"), a=uuid.UUID(int=1))
    b.consume()
    assert wait_for(lambda: len(got) == 1, 10)
    assert got == [(NOW, (decimal.Decimal("1.5"), decimal.Decimal("2")), {"a": uuid.UUID(int=1)})]
    assert type(got[0][1][0]) is decimal.Decimal and type(got[0][2]["a"]) is uuid.UUID


def _typed3(when: dt.datetime, price: decimal.Decimal, ids: list[int]) -> None:
    pass


D = '"2026-01-01T00:00:00Z"'
MISFITS = [
    ('["not a date","1.5",[1]]', "{}", "'when' does not fit its annotation datetime"),
    (f'[{D},"x",[1]]', "{}", "'price' does not fit its annotation Decimal"),
    (f'[{D},"1",[1,"2"]]', "{}", r"at `ids\[1\]`"),
    ("[]", f'{{"when":{D},"price":"1","ids":{{}}}}', r"'ids' .* list\[int\]: Expected `array`"),
    (f'[{D},"1"]', "{}", "missing a required argument: 'ids'"),
]


@pytest.mark.parametrize(("args", "kwargs", "why"), MISFITS)
def test_an_argument_that_does_not_fit_is_a_decode_error_naming_it(
    args: str, kwargs: str, why: str
) -> None:
    codec = CallCodec(_typed3, queue_name="q")
    body = f'{{"task_id":"t1","args":{args},"kwargs":{kwargs}}}'.encode()
    with pytest.raises(DecodeError, match=why) as caught:
        codec.decode(body)
    assert caught.value.task_id == "t1"


def test_a_mistyped_argument_is_dead_lettered_at_once_naming_parameter_and_type(
    boosters: list[Booster[Any, Any]],
) -> None:
    calls: list[Any] = []
    b = _booster(lambda when: calls.append(when), max_retries=3)
    b2 = _booster(_typed3, max_retries=3)
    boosters.append(b2)
    b2.broker.publish(b2.queue_name, [b'{"task_id":"t9","args":[1,"2",[3]]}'])
    b2.consume()
    assert wait_for(lambda: b2.dead_letter_count() == 1, 10)
    [letter] = b2.dead_letters()
    assert letter.attempts == 0 and letter.task_id == "t9"
    assert "DecodeError: argument 'when' does not fit its annotation datetime" in letter.error
    assert calls == [] and b.message_count() == 0


PLAIN_LOSSY: list[Any] = [
    float("nan"),
    float("inf"),
    b"bytes",
    {1, 2},
    (1, 2),
    {1: "a"},
    NOW,
    decimal.Decimal("1.5"),
    uuid.UUID(int=3),
    Color.RED,
    [1, [2, (3,)]],
    {"a": {"b": b"x"}},
    Point(1, 2.0, set()),
]


def _plain(x, y=None):  # type: ignore[no-untyped-def]  # unannotated on purpose
    pass


def _any_nested(x: list[Any], y: dict[str, Any] | None = None) -> None:
    pass


@pytest.mark.parametrize("func", [_plain, _any_nested])
@pytest.mark.parametrize("value", PLAIN_LOSSY, ids=repr)
def test_strict_push_refuses_a_value_that_would_not_arrive_equal(
    func: Callable[..., None], value: Any
) -> None:
    b = _booster(func)
    if func is _any_nested:
        value = [value]  # inside the Any part of an annotated container
    with pytest.raises(EncodeError, match=r"argument 'x' = .* would arrive as .*strict_args"):
        b.push(value)
    with pytest.raises(EncodeError, match="argument 'y'"):
        b.push(1 if func is _plain else [], y={"k": value})
    assert b.message_count() == 0


def test_strict_push_accepts_plain_json_values() -> None:
    b = _booster(_plain)
    for value in [None, True, 0, -(2**70), 1.5, -0.0, "é\u2603", [1, "a", None], {"a": [{}]}]:
        b.push(value, y=value)
    assert b.message_count() == 9
    b.push(Level.HIGH)  # an IntEnum arrives as an equal int
    assert b.message_count() == 10


def test_nan_into_a_float_annotation_is_refused_or_lossy_with_strict_args_off(
    log_lines: list[str], boosters: list[Booster[Any, Any]]
) -> None:
    got: list[Any] = []
    strict = _booster(_func(Optional[float], got))  # noqa: UP045
    with pytest.raises(EncodeError, match="NaN or infinity"):
        strict.push(float("nan"))
    strict.push(None)  # a real null is fine
    lossy = _booster(_func(Optional[float], got), strict_args=False)  # noqa: UP045
    boosters.append(lossy)
    lossy.push(float("nan"))
    lossy.push(float("-inf"))
    lossy.consume()
    assert wait_for(lambda: len(got) == 2, 10)
    assert got == [None, None]
    assert sum("NaN or infinity" in line for line in log_lines) == 1


def test_lossy_push_with_strict_args_off_arrives_as_json_and_warns_once(
    log_lines: list[str], boosters: list[Booster[Any, Any]]
) -> None:
    got: list[Any] = []
    b = _booster(lambda x: got.append(x), strict_args=False)
    boosters.append(b)
    b.push(b"\x00\x01abc")
    b.push({1: "a"})
    b.push((1, 2))
    b.consume()
    assert wait_for(lambda: len(got) == 3, 10)
    assert got == ["AAFhYmM=", {"1": "a"}, [1, 2]]
    assert sum("strict_args=False" in line for line in log_lines) == 1


def test_strict_args_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="strict_args"):
        BoostOptions(queue_name="q", consume_func=_plain, strict_args="no")  # type: ignore[arg-type]


def _circular() -> list[Any]:
    x: list[Any] = []
    x.append(x)
    return x


def _deep(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        node.append([])
        node = node[0]
    return root


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (_circular(), "RecursionError"),
        (_deep(10_000), "RecursionError"),
        ("\ud800", "UnicodeEncodeError"),
        (object(), "TypeError"),
        (10**5000, "ValueError"),  # Python's limit on int -> str digits
    ],
    ids=["circular", "deep", "surrogate", "object", "huge-int"],
)
@pytest.mark.parametrize("func", [_plain, _typed3])
def test_every_push_error_is_an_encode_error_naming_the_argument(
    value: Any, why: str, func: Callable[..., None]
) -> None:
    b = _booster(func)
    args = (value, None) if func is _plain else (NOW, value, [1])
    name = "x" if func is _plain else "price"
    with pytest.raises(EncodeError, match=f"argument '{name}' = .*{why}"):
        b.push(*args)
    with pytest.raises(EncodeError, match=f"argument '{name}'"):
        b.push_many([args[:1] + (None,) * (len(args) - 1), args])
    assert b.message_count() == 0


def test_a_call_that_does_not_fit_is_a_geboost_error_and_a_type_error() -> None:
    b = _booster(_typed3)
    for bad in [lambda: b.push(NOW), lambda: b.push_many([(NOW,)]), lambda: b.push_many([3])]:
        with pytest.raises(EncodeError) as caught:
            bad()
        assert isinstance(caught.value, GeboostError) and isinstance(caught.value, TypeError)
    with pytest.raises(ConfigurationError):
        b.push_many([], chunk_size=0)
    assert b.message_count() == 0


# ----------------------------------------------------------------- fuzzing the decoder
def _varargs(*args: int, **kwargs: dt.date) -> None:
    pass


def _mixed(a, b: bytes, /, c: set[int] = set(), *, d: Color = Color.RED) -> None:  # type: ignore[no-untyped-def]  # noqa: B006
    pass


FUZZ_FUNCS: list[Callable[..., Any]] = [_typed3, _plain, _any_nested, _varargs, _mixed, print]


def _fuzz_bodies(seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    good = msgspec.json.encode(
        {"task_id": "t", "args": ["2026-01-01T00:00:00Z", "1.5", [1, 2]], "kwargs": {}}
    )
    yield good
    for cut in range(len(good)):
        yield good[:cut]  # every truncation
    for _ in range(300):  # random bytes
        yield rng.randbytes(rng.randrange(0, 64))
    for _ in range(300):  # random byte flips of a good body
        body = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        yield bytes(body)
    yield from [
        b"",
        b"   ",
        b"null",
        b"[]",
        b"1",
        b'"s"',
        b"\xef\xbb\xbf" + good,  # BOM
        b'{"task_id":"a","task_id":"b","args":[],"args":[1,2,3]}',  # duplicate keys
        b'{"task_id":"\xff\xfe"}',  # invalid UTF-8 in a string
        b'{"task_id":"t","args":["\xc3\x28"]}',
        b'{"task_id":"t\xed\xa0\x80"}',  # an encoded surrogate
        b'{"task_id":"\\ud800","args":["\\udc00\\ud800"]}',  # escaped lone surrogates
        b'{"task_id":"t","args":[NaN,Infinity,-Infinity]}',
        b'{"task_id":"t","args":[1e999,-0,1' + b"0" * 5000 + b"]}",
        b'{"task_id":1}',
        b'{"args":[1]}',
        b'{"task_id":"t","args":{}}',
        b'{"task_id":"t","kwargs":[]}',
        b'{"task_id":"t","kwargs":{"x":1,"nope":2}}',
        b'{"task_id":"t","publish_time":"yesterday"}',
        b'{"task_id":"t","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"task_id":"t","kwargs":{"x":' + b'{"a":' * 100_000 + b"}",
        b"[" * 100_000,
        b'{"task_id":"t","args":[' + b"1," * 1_000_000 + b"1]}",  # huge
        b'{"task_id":"t","args":["' + b"x" * 5_000_000 + b'"]}',
        good + b"trailing",
    ]


@pytest.mark.parametrize("func", FUZZ_FUNCS, ids=lambda f: f.__name__)
def test_decode_of_any_bytes_is_a_message_or_a_decode_error(func: Callable[..., Any]) -> None:
    codec = CallCodec(func, queue_name="q")
    outcomes = {"message": 0, "DecodeError": 0}
    bodies = list(_fuzz_bodies(seed=8))
    for body in bodies:
        try:
            message = codec.decode(body)
        except DecodeError as exc:
            assert len(str(exc)) < 2000  # one readable log line, not the body
            outcomes["DecodeError"] += 1
        else:
            assert isinstance(message, TaskMessage)
            outcomes["message"] += 1
    assert outcomes["message"] + outcomes["DecodeError"] == len(bodies)
    assert outcomes["DecodeError"] >= 600


def test_decode_task_and_dead_letter_decoding_raise_only_decode_error() -> None:
    for body in _fuzz_bodies(seed=9):
        for decode in (decode_task, decode_dead_letter):
            try:
                decode(body)
            except DecodeError:
                pass


class _Handler:
    def __call__(self, day: dt.date, n: int = None) -> None:  # type: ignore[assignment]  # noqa: RUF013
        pass


def _with_unsupported(a: Callable[[int], int], b: dt.date) -> None:
    pass


def test_callable_objects_partials_and_implicit_optional_are_converted() -> None:
    calls: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (_Handler(), (dt.date(2026, 5, 1), None)),
        (functools.partial(_typed3, NOW), (decimal.Decimal("3.5"), [1])),
    ]
    for func, args in calls:
        codec = CallCodec(func, queue_name="q")
        message = codec.decode(codec.encode_call(args, {})[0])
        assert tuple(message.args) == args
        assert [type(a) for a in message.args] == [type(a) for a in args]


def test_an_annotation_msgspec_cannot_convert_is_plain_json() -> None:
    codec = CallCodec(_with_unsupported, queue_name="q")
    with pytest.raises(EncodeError, match=r"argument 'a' = \(1, 2\) .*msgspec cannot convert"):
        codec.encode_call(((1, 2), dt.date(2026, 1, 1)), {})
    message = codec.decode(codec.encode_call(("a name", dt.date(2026, 1, 1)), {})[0])
    assert tuple(message.args) == ("a name", dt.date(2026, 1, 1))


@pytest.mark.parametrize("func", [_typed3, _plain])
def test_a_broken_envelope_still_names_its_task_id_when_it_can(func: Callable[..., Any]) -> None:
    codec = CallCodec(func, queue_name="q")
    for body, task_id in [
        (b'{"task_id":"t7","args":{}}', "t7"),
        (b'{"task_id":"t8","publish_time":"noon"}', "t8"),
        (b'{"task_id":7}', ""),
        (b"\xff", ""),
    ]:
        with pytest.raises(DecodeError, match="not a geboost task message") as caught:
            codec.decode(body)
        assert caught.value.task_id == task_id

"""The take's reply reader (``redis_wire``): any split of the bytes, and the shapes it refuses."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from geboost.brokers.redis_wire import _parse_triple

REPLY = b"*3\r\n:-1\r\n$4\r\n2,12\r\n$12\r\nab\r\n$x\r\n\x00:12\r\n"


def test_a_whole_reply_gives_its_three_parts_and_its_length() -> None:
    assert _parse_triple(REPLY) == ((-1, b"2,12", b"ab\r\n$x\r\n\x00:12"), len(REPLY))


def test_every_cut_short_of_the_end_asks_for_more() -> None:
    # A reply arrives in pieces anywhere (even inside "\r\n"): each prefix is incomplete.
    for end in range(1, len(REPLY)):
        assert _parse_triple(REPLY[:end]) is None, REPLY[:end]


def test_an_empty_take_parses() -> None:
    reply = b"*3\r\n:0\r\n$0\r\n\r\n$0\r\n\r\n"
    assert _parse_triple(reply) == ((0, b"", b""), len(reply))


@pytest.mark.parametrize("reply", [b"$5\r\nhello\r\n", b":1\r\n", b"*2\r\n:0\r\n$0\r\n\r\n"])
def test_any_other_shape_is_a_protocol_error(reply: bytes) -> None:
    with pytest.raises(RedisConnectionError, match="unexpected reply"):
        _parse_triple(reply)

"""``Booster[P, R].push`` is checked by mypy against ``consume_func``'s signature."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SNIPPET = """
from geboost import BoostOptions, boost, new_booster

def add(x: int, y: int) -> int:
    return x + y

b = new_booster(BoostOptions(queue_name="q", consume_func=add))
b.push(1, 2)
b.push(1, y=2)
b.push("one", 2)  # line 9: wrong type
b.push(1)  # line 10: missing argument
reveal_type(b(1, 2))  # line 11

@boost("q2")
def hello(name: str) -> None: ...

hello.push("x")
hello.push(3)  # line 17: wrong type
"""


def test_push_is_type_checked_against_the_function(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET).lstrip("\n"))
    out, _err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"), str(source)]
    )
    errors = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert status == 1, out
    assert errors == {9, 10, 17}, out
    assert 'Revealed type is "int"' in out or '"builtins.int"' in out

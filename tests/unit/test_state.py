"""The state store seam without a server: the in-process store, fingerprints, a Redis store
that cannot be reached (``StateStoreError``, never a redis-py error), and the typing of
``AsyncResult``."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import gevent
import pytest

from geboost import (
    BoostOptions,
    BrokerConfig,
    ConfigurationError,
    StateStoreError,
    new_booster,
)
from geboost.message import fingerprint
from geboost.state import open_state_store
from geboost.state.memory import MemoryStateStore
from tests.support import free_port, memory_booster, wait_for


def test_memory_store_keys_expire_and_claims_are_exclusive() -> None:
    store = MemoryStateStore()
    store.set("a", b"1", ttl_s=0.05)
    assert store.get("a") == b"1"
    assert store.set_if_absent("c", b"x", ttl_s=10)
    assert not store.set_if_absent("c", b"y", ttl_s=10)
    assert store.get("c") == b"x"
    assert wait_for(lambda: store.get("a") is None, 2)
    assert store.delete("c")
    assert not store.delete("c")


def test_memory_store_drops_expired_keys_nobody_reads_and_keeps_rewritten_ones() -> None:
    now = [100.0]
    store = MemoryStateStore(clock=lambda: now[0])
    for i in range(500):
        store.set(f"k{i}", b"v", ttl_s=1)
    store.set("kept", b"old", ttl_s=1)
    store.set("kept", b"new", ttl_s=10)  # its first expiry no longer applies
    store.set("forever", b"v")
    assert repr(store) == "MemoryStateStore(502 keys)"
    now[0] = 102.0
    store.set("trigger", b"v", ttl_s=1)  # any write drops what is past its time
    assert repr(store) == "MemoryStateStore(3 keys)"
    assert store.get("kept") == b"new" and store.get("forever") == b"v"
    now[0] = 111.0
    assert store.get("kept") is None and store.get("forever") == b"v"


def test_memory_store_notifies_a_watcher_registered_before() -> None:
    store = MemoryStateStore()
    with store.watch("geboost:done", "k") as watch:
        gevent.spawn(store.write_batch, [("k", b"v", 0.0)], [("geboost:done", "k")])
        assert watch.wait(5)
    assert store.get("k") == b"v"


def test_fingerprint_is_canonical() -> None:
    assert fingerprint((1,), {"a": 1, "b": 2}) == fingerprint((1,), {"b": 2, "a": 1})
    assert fingerprint((1,), {}) != fingerprint((2,), {})


def test_memory_broker_boosters_share_their_namespace_store() -> None:
    url = uuid.uuid4().hex
    a = open_state_store("", broker_kind="memory", broker_config=BrokerConfig(broker_url=url))
    b = open_state_store("", broker_kind="memory", broker_config=BrokerConfig(broker_url=url))
    assert a is b
    assert (
        open_state_store(f"memory://{url}", broker_kind="rabbitmq", broker_config=BrokerConfig())
        is a
    )
    assert open_state_store("", broker_kind="rabbitmq", broker_config=BrokerConfig()) is None


def test_a_bad_state_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="state_url"):
        memory_booster(lambda x: x, state_url="http://nowhere", result_ttl_s=1)


def test_an_unreachable_store_raises_state_store_error_and_calls_still_run() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    options: dict[str, Any] = {
        "state_url": url,
        "result_ttl_s": 10.0,
        "broker_config": BrokerConfig(
            broker_url=uuid.uuid4().hex,
        ),
    }
    ran: list[int] = []
    b = new_booster(
        BoostOptions(
            queue_name="unreachable-store",
            consume_func=ran.append,
            handle_signals=False,
            poll_timeout_s=0.1,
            **options,
        )
    )
    with pytest.raises(StateStoreError):
        b.push(1)  # the pending status could not be written: nothing was sent
    assert b.message_count() == 0
    with pytest.raises(StateStoreError):
        b.is_paused()
    # A worker whose store is down still runs calls (not paused; statuses retried, logged).
    b2 = new_booster(
        BoostOptions(
            queue_name="unreachable-store",
            consume_func=ran.append,
            handle_signals=False,
            poll_timeout_s=0.1,
            broker_config=options["broker_config"],
        )
    )
    b2.push(2)
    b.consume()
    try:
        assert wait_for(lambda: ran == [2], 10)
    finally:
        b.stop(timeout_s=2)


SNIPPET = """
from geboost import AsyncResult, BoostOptions, new_booster

def add(x: int, y: int) -> int:
    return x + y

b = new_booster(BoostOptions(queue_name="q", consume_func=add, result_ttl_s=1))
r = b.push(1, 2)
reveal_type(r.get())  # line 8
s: AsyncResult[str] = b.push(1, 2)  # line 9: wrong type
"""


def test_async_result_is_typed_by_the_return_annotation(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET).lstrip("\n"))
    out, _err, _status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"), str(source)]
    )
    errors = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert errors == {9}, out
    assert 'Revealed type is "int"' in out or '"builtins.int"' in out, out

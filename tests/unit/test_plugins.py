"""Third-party brokers: registered in code or discovered through the entry point group."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from geboost import (
    BoostOptions,
    BrokerConfig,
    ConfigurationError,
    UnknownBrokerError,
    available_broker_kinds,
    new_booster,
    register_broker,
)
from geboost.brokers import base
from tests.plugin.toy_broker import ToyBroker
from tests.support import wait_for


def test_registered_toy_broker_runs_a_booster() -> None:
    register_broker("toy", ToyBroker)
    ran: list[int] = []
    b = new_booster(
        BoostOptions(
            queue_name=f"toy-{uuid.uuid4().hex[:6]}",
            consume_func=ran.append,
            broker_kind="toy",
            conn_num=2,
            handle_signals=False,
        )
    )
    b.push_many([(i,) for i in range(30)])
    b.consume()
    try:
        assert b.wait_until_idle(timeout_s=10)
        assert sorted(ran) == list(range(30))
    finally:
        b.stop(timeout_s=2)
    assert "toy" in available_broker_kinds()


def test_toy_broker_options_are_checked_by_the_broker() -> None:
    register_broker("toy", ToyBroker)
    opts = BoostOptions(
        queue_name="q",
        consume_func=print,
        broker_kind="toy",
        broker_config=BrokerConfig(broker_transport_options={"colour": "red"}),
    )
    with pytest.raises(ConfigurationError, match="colour"):
        new_booster(opts)


@pytest.mark.parametrize("bad", ["", "   "])
def test_register_rejects_empty_kind(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        register_broker(bad, ToyBroker)


def test_register_rejects_non_callable_factory() -> None:
    with pytest.raises(ConfigurationError, match="factory"):
        register_broker("toy3", 42)  # type: ignore[arg-type]


def test_entry_point_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A minimal installed distribution advertising a broker under "geboost.brokers".
    dist = tmp_path / "toy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[geboost.brokers]\ntoyep = tests.plugin.toy_broker:ToyBroker\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    assert "toyep" in available_broker_kinds()
    ran: list[Any] = []
    b = new_booster(
        BoostOptions(
            queue_name=f"ep-{uuid.uuid4().hex[:6]}",
            consume_func=ran.append,
            broker_kind="toyep",
            handle_signals=False,
        )
    )
    b.push("hello")
    b.consume()
    try:
        assert wait_for(lambda: ran == ["hello"], 10)
    finally:
        b.stop(timeout_s=2)
    assert "tests.plugin" in sys.modules


def test_broken_plugin_fails_only_its_own_kind() -> None:
    register_broker("broken", "no_such_module_xyz:Factory")
    with pytest.raises(UnknownBrokerError, match="no_such_module_xyz"):
        new_booster(BoostOptions(queue_name="q", consume_func=print, broker_kind="broken"))

from __future__ import annotations

import uuid
from pathlib import Path

from loguru import logger

from geboost import BoostOptions, BrokerConfig, new_booster
from tests.support import wait_for


def failing(i: int) -> None:
    raise RuntimeError(f"bad {i}")


def test_file_sink_rotates_and_lines_carry_queue_and_task_id(tmp_path: Path) -> None:
    log_file = tmp_path / "geboost.log"
    queue = f"logq-{uuid.uuid4().hex[:6]}"
    b = new_booster(
        BoostOptions(
            queue_name=queue,
            consume_func=failing,
            max_retries=0,
            broker_config=BrokerConfig(broker_url=uuid.uuid4().hex),
            handle_signals=False,
            log_file=str(log_file),
            log_rotation="2 KB",
            log_retention=3,
        )
    )
    pushed = [b.push(i).task_id for i in range(30)]
    b.consume()
    try:
        assert wait_for(lambda: b.dead_letter_count() == 30, 10)
    finally:
        b.stop(timeout_s=2)
    files = sorted(tmp_path.iterdir())
    assert len(files) >= 2, "rotation at 2 KB should have produced more than one file"
    assert len(files) <= 4, "retention keeps 3 rotated files plus the current one"
    text = "".join(f.read_text() for f in files)
    dead_lines = [line for line in text.splitlines() if "dead-letter queue" in line]
    assert dead_lines and all(f"[{queue} task=" in line for line in dead_lines)
    assert any(task_id in text for task_id in pushed[-5:])


def test_a_users_own_loguru_handler_keeps_receiving_records() -> None:
    seen: list[str] = []
    handler = logger.add(seen.append, level="INFO", format="{message}")
    try:
        b = new_booster(
            BoostOptions(
                queue_name="user-logs",
                consume_func=print,
                broker_config=BrokerConfig(broker_url=uuid.uuid4().hex),
                handle_signals=False,
                log_file="",
            )
        )
        b.consume()
        b.stop(timeout_s=1)
    finally:
        logger.remove(handler)
    assert any("[user-logs] consuming" in line for line in seen)


def test_bad_log_options_are_named(tmp_path: Path) -> None:
    import pytest

    from geboost import ConfigurationError

    with pytest.raises(ConfigurationError, match="log_rotation"):
        new_booster(
            BoostOptions(
                queue_name="q",
                consume_func=print,
                log_file=str(tmp_path / "x.log"),
                log_rotation="every blue moon",
            )
        )

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from loguru import logger

from geboost import BoostOptions, BrokerConfig, ConfigurationError, new_booster
from tests.support import python_cmd, wait_for


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
    # 30 dead letters with their tracebacks are far more than 4 x 2 KB: it rotated many times,
    # and retention keeps exactly 3 rotated files plus the current one.
    assert len(files) == 4, [f.name for f in files]
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
    with pytest.raises(ConfigurationError, match="log_rotation"):
        new_booster(
            BoostOptions(
                queue_name="q",
                consume_func=print,
                log_file=str(tmp_path / "x.log"),
                log_rotation="every blue moon",
            )
        )


CONSOLE_SCRIPT = """
import uuid
from geboost import BoostOptions, BrokerConfig, new_booster

for queue, level in (("quiet-q", "WARNING"), ("loud-q", "DEBUG"), ("plain-q", "INFO")):
    b = new_booster(BoostOptions(
        queue_name=queue, consume_func=print, log_level=level, handle_signals=False,
        broker_config=BrokerConfig(broker_url=uuid.uuid4().hex),
    ))
    b.consume()
    b.stop(timeout_s=1)
"""


def test_log_level_applies_on_loguru_default_console_handler() -> None:
    """The console is loguru's own default handler (stderr), which geboost does not own and
    leaves as it is: each booster's log_level decides which of its records reach it."""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        python_cmd("-c", CONSOLE_SCRIPT),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()

    def shown(queue: str, text: str) -> list[str]:
        return [line for line in lines if f"[{queue}] {text}" in line]

    assert shown("quiet-q", "") == [], done.stderr  # INFO and DEBUG records below WARNING
    assert len(shown("loud-q", "consuming with")) == 1, done.stderr  # once: no second sink
    assert len(shown("loud-q", "booster built")) == 1, done.stderr
    assert "| DEBUG    |" in shown("loud-q", "booster built")[0]
    assert len(shown("plain-q", "consuming with")) == 1, done.stderr
    assert shown("plain-q", "booster built") == [], done.stderr  # DEBUG hidden at INFO


def test_log_level_applies_to_the_applications_own_handler_too() -> None:
    seen: list[str] = []
    handler = logger.add(seen.append, level="DEBUG", format="{level} {message}")
    queue = f"lvl-{uuid.uuid4().hex[:6]}"
    try:
        b = new_booster(
            BoostOptions(
                queue_name=queue,
                consume_func=failing,
                max_retries=0,
                log_level="error",  # loguru's names, in any case
                broker_config=BrokerConfig(broker_url=uuid.uuid4().hex),
                handle_signals=False,
            )
        )
        b.push(1)
        b.consume()
        assert wait_for(lambda: b.dead_letter_count() == 1, 10)
        b.stop(timeout_s=1)
    finally:
        logger.remove(handler)
    ours = [line for line in seen if f"[{queue}" in line]
    assert len(ours) == 1, seen
    assert ours[0].startswith("ERROR ") and "dead-letter queue" in ours[0]


def test_unknown_log_level_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"log_level.*'LOUD'"):
        new_booster(BoostOptions(queue_name="q", consume_func=print, log_level="LOUD"))

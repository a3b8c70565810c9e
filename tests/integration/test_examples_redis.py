"""The run-forever example (the Go example's shape) on the real Redis: it consumes until a
signal, then stops gracefully and exits 0, without any gevent patching warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import port_open, skip_or_fail, stop_process

ROOT = Path(__file__).resolve().parents[2]


def test_forever_example_runs_tasks_until_sigterm() -> None:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "forever.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # its prints are read line by line
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            "1 + 2 = 3" in seen and "value: hello world" in seen
        ):
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.strip())
        assert "1 + 2 = 3" in seen and "value: hello world" in seen, seen
        assert proc.poll() is None  # still consuming: it runs until told to stop
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "MonkeyPatchWarning" not in err
    assert "stopped" in err  # the graceful stop was logged

"""The run-forever example (the Go example's shape) on the real Redis: it consumes until a
signal, then stops gracefully and exits 0, without any gevent patching warning.

The example's fixed queue names are swapped for this session's own (``unique_name``): another
developer running this test on the shared Redis at the same time would otherwise take our
messages, and the session's leak check covers the keys it leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from geboost import BrokerConfig
from geboost.brokers.redis import RedisBroker
from tests.support import cleanup_queues, port_open, skip_or_fail, stop_process, unique_name

ROOT = Path(__file__).resolve().parents[2]


def test_forever_example_runs_tasks_until_sigterm(tmp_path: Path) -> None:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    queues = {name: unique_name(name) for name in ("queue_test2", "queue_test33")}
    source = (ROOT / "examples" / "forever.py").read_text()
    for fixed, own in queues.items():
        assert source.count(f'"{fixed}"') == 1, fixed
        source = source.replace(f'"{fixed}"', f'"{own}"')
    script = tmp_path / "forever.py"
    script.write_text(source)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",  # its prints are read line by line
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
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
        cleaner = RedisBroker(BrokerConfig(broker_url="127.0.0.1:6379"))
        for own in queues.values():
            cleanup_queues(cleaner, own)
        cleaner.close()
    assert proc.returncode == 0, err
    assert "MonkeyPatchWarning" not in err
    assert "stopped" in err  # the graceful stop was logged

"""What only a separate process can show: monkey-patching on import, and SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )


def test_importing_geboost_makes_blocking_calls_cooperative() -> None:
    result = run_python(
        """
        import geboost
        import socket, time, threading
        import gevent.socket, gevent.monkey
        assert socket.socket is gevent.socket.socket
        assert gevent.monkey.is_module_patched("time")
        assert gevent.monkey.is_module_patched("threading")
        import gevent
        started = time.monotonic()
        gevent.joinall([gevent.spawn(time.sleep, 0.3) for _ in range(50)])
        print("elapsed", time.monotonic() - started)
        """
    )
    assert result.returncode == 0, result.stderr
    elapsed = float(result.stdout.split()[-1])
    assert elapsed < 0.3 * 50 / 2  # ran together, not one after another


def test_patching_is_idempotent_when_the_app_patched_first() -> None:
    result = run_python(
        """
        from gevent import monkey
        monkey.patch_all()
        import geboost, geboost._patch
        geboost._patch.ensure_patched()
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "MonkeyPatchWarning" not in result.stderr


WORKER = """
import sys, time
import geboost
from geboost import BoostOptions, new_booster

def slow(i):
    print("start", i, flush=True)
    time.sleep(1.0)
    print("finished", i, flush=True)

b = new_booster(BoostOptions(queue_name="sig", consume_func=slow, concurrent_num=2))
b.push_many([(i,) for i in range(6)])
b.consume()
b.join()
print("joined, left in queue:", b.message_count(), flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully(signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("start"), first
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = (first + out).splitlines()
    started = [line for line in lines if line.startswith("start")]
    finished = [line for line in lines if line.startswith("finished")]
    assert len(started) == 2 and len(finished) == 2  # running calls finished
    assert lines[-1] == "joined, left in queue: 4"  # the rest went back to the queue

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_every_task_and_ends_by_itself_without_warnings() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sums = sorted(int(line.rsplit("= ", 1)[1]) for line in lines if line.startswith("add:"))
    assert sums == [3 * i for i in range(100)]
    assert sum(1 for line in lines if line.startswith("print_value: hello world")) == 100
    assert lines[-1].startswith("done: 200 tasks")
    assert "MonkeyPatchWarning" not in result.stderr

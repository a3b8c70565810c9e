"""A small run of the benchmark and of the scrape example, so that neither can rot.

The benchmark's figures are not checked (this machine is noisy); its bookkeeping is: a table
printed, no FAILED row (a lost, failed or unacknowledged task), a valid JSON file. Network
brokers that do not answer print "n/a" rows, which are allowed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import unique_name

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_prints_a_table_without_failures_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)),
            # Named for this session: the leak check then covers every key and queue it makes.
            *("--run-id", unique_name("geboost-bench")),
        ],
        capture_output=True,
        text=True,
        timeout=240,  # about 95 s here: one process per row, three brokers
        cwd=ROOT,
    )
    lines = result.stdout.splitlines()
    assert lines and lines[0].split()[:2] == ["broker", "measure"], result.stdout + result.stderr
    failed = [line for line in lines if "FAILED" in line]
    assert not failed, "\n".join(failed) + "\n" + result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads(out.read_text())
    rows = {(row["broker"], row["measure"].split(":")[0]): row for row in report["rows"]}
    for measure in ("publish", "consume-noop", "io-fanout", "http-fanout", "qps"):
        row = rows[("memory", measure)]
        assert row["value"] is not None and row["value"] > 0, row
    for row in report["rows"]:
        assert row["value"] is not None or row["shown"].startswith("n/a"), row


def test_scrape_example_fetches_every_url() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "scrape.py"), "--n", "60", "--concurrency", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fetched 60 of 60 URLs" in result.stdout, result.stdout

"""The real ``geboost`` console script, run in subprocesses against the shared Redis: --help,
worker until SIGTERM, status, dlq, purge, bad input, and the supervisor of ``--processes``.

The script is the one installed next to ``sys.executable`` (``pip install -e .`` puts it
there); when it is absent (a venv installed before the script was declared), the tests fall
back to ``sys.executable -m geboost`` and say so in their output. PYTHONPATH points at this
checkout, so the script and its children import the code under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    cleanup_queues,
    free_port,
    port_open,
    skip_or_fail,
    stop_process,
    unique_name,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "geboost"
FAST_LEASE = {"heartbeat_interval_s": 0.2, "lease_timeout_s": 1.0, "recovery_interval_s": 0.25}

TASKS = textwrap.dedent(
    """
    import os
    import time

    from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster

    with open(os.environ["CLI_TEST_IMPORTS"], "a") as f:
        f.write(f"{os.getpid()}\\n")

    def work(x: int) -> None:
        if x < 0:
            raise ValueError(f"negative: {x}")
        time.sleep(float(os.environ.get("CLI_TEST_SLEEP_S", "0")))
        with open(os.environ["CLI_TEST_OUT"], "a") as f:
            f.write(f"{x} {os.getpid()}\\n")

    work_booster = new_booster(
        BoostOptions(
            queue_name=os.environ["CLI_TEST_QUEUE"],
            consume_func=work,
            broker_kind=BrokerKind.REDIS,
            broker_config=BrokerConfig(
                broker_url=os.environ.get("CLI_TEST_URL", ""),
                broker_transport_options=FAST_LEASE,
            ),
            max_retries=0,
            concurrent_num=10,
        )
    )
    if os.environ.get("CLI_TEST_EVERY_S"):
        work_booster.every(float(os.environ["CLI_TEST_EVERY_S"]), 7)
    """
).replace("=FAST_LEASE,", f"={FAST_LEASE!r},")


def geboost_cmd() -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT)]
    print(f"{SCRIPT} is absent: running `{sys.executable} -m geboost` instead")
    return [sys.executable, "-m", "geboost"]


class Env:
    """One test's module file, queue, output files and the environment of its commands."""

    def __init__(self, tmp: Path, url: str = "") -> None:
        self.queue = unique_name("c")
        self.module = tmp / "clitasks.py"
        self.module.write_text(TASKS)
        self.out = tmp / "ran.txt"
        self.imports = tmp / "imports.txt"
        self.tmp = tmp
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CLI_TEST_QUEUE": self.queue,
            "CLI_TEST_OUT": str(self.out),
            "CLI_TEST_IMPORTS": str(self.imports),
            "CLI_TEST_URL": url,
        }

    def run(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*geboost_cmd(), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.tmp,
            timeout=timeout_s,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*geboost_cmd(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.tmp,
        )

    def ran(self) -> list[int]:
        if not self.out.exists():
            return []
        return [int(line.split()[0]) for line in self.out.read_text().splitlines() if line]

    def booster(self) -> object:
        """The test's booster, built in this process (pushing, counting, cleaning up)."""
        from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster

        return new_booster(
            BoostOptions(
                queue_name=self.queue,
                consume_func=lambda x: None,
                broker_kind=BrokerKind.REDIS,
                broker_config=BrokerConfig(broker_transport_options=FAST_LEASE),
                handle_signals=False,
            )
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    if not port_open("127.0.0.1", 6379):
        skip_or_fail("no Redis server answers on 127.0.0.1:6379")
    e = Env(tmp_path)
    b = e.booster()
    yield e
    cleanup_queues(b.broker, e.queue)  # type: ignore[attr-defined]
    b.broker.close()  # type: ignore[attr-defined]


def push(env: Env, xs: list[int]) -> None:
    b = env.booster()
    b.push_many([(x,) for x in xs])  # type: ignore[attr-defined]
    b.broker.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("sub", [[], ["worker"], ["status"], ["dlq"], ["purge"]])
def test_help_of_every_subcommand(sub: list[str]) -> None:
    done = subprocess.run(
        [*geboost_cmd(), *sub, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: geboost {' '.join(sub)}".rstrip()), done.stdout
    assert "Exit codes" in done.stdout


def test_worker_consumes_a_module_file_until_sigterm(env: Env) -> None:
    push(env, list(range(200)))
    proc = env.start("worker", str(env.module))
    try:
        assert wait_for(lambda: len(env.ran()) >= 200, 60), env.ran()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=40)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 0, err
    assert sorted(env.ran()) == list(range(200))
    assert f"consuming {env.queue}" in err


def test_status_dlq_and_purge_confirm_with_counts(env: Env) -> None:
    push(env, [-1, -2, -3])
    proc = env.start("worker", str(env.module))
    try:
        b = env.booster()
        assert wait_for(lambda: b.dead_letter_count() == 3, 60)  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=40)
    finally:
        _kill_tree(proc)
    push(env, [1, 2, 3, 4, 5])

    status = env.run("status", str(env.module))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "WAITING",
        "IN",
        "FLIGHT",
        "DELAYED",
        "DEAD",
        "PAUSED",
        "CONSUMERS",
    ]
    # A Redis booster has a state store (the broker's Redis): paused no, no consumer now.
    assert lines[1].split() == [env.queue, "5", "0", "0", "3", "no", "0"]
    assert all(len(line) <= 80 for line in lines)

    m = ["-m", str(env.module)]
    show = env.run("dlq", "show", env.queue, *m)
    assert show.returncode == 0, show.stderr
    assert show.stdout.count("ValueError: negative") == 3
    assert show.stdout.splitlines()[-1] == f"3 dead letter(s) in {env.queue}.dlq, 3 shown"

    requeue = env.run("dlq", "requeue", env.queue, *m)
    assert requeue.stdout.strip() == (
        f"requeued 3 dead letter(s) to {env.queue}; 0 left in {env.queue}.dlq"
    ), requeue.stderr

    purged = env.run("purge", env.queue, *m)
    assert purged.stdout.strip() == f"purged 8 waiting message(s) from {env.queue}"

    push(env, [-4])  # dead again, through the env var this time
    env.env["GEBOOST_MODULES"] = str(env.module)
    proc = env.start("worker")
    try:
        assert wait_for(lambda: b.dead_letter_count() == 1, 60)  # type: ignore[attr-defined]
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    dlq_purge = env.run("dlq", "purge", env.queue)
    assert dlq_purge.stdout.strip() == f"purged 1 dead letter(s) from {env.queue}.dlq"
    b.broker.close()  # type: ignore[attr-defined]


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("geboost "), done.stderr
    return last


def test_bad_input_gets_one_line_and_a_nonzero_exit(env: Env) -> None:
    broken = env.tmp / "broken.py"
    broken.write_text("import geboost\n1 / 0\n")
    done = env.run("worker", str(broken))
    assert done.returncode == 3
    assert "Traceback" in done.stderr  # the module's traceback first
    assert _one_error_line(done) == (
        "geboost worker: error: cannot import module "
        f"'{broken}': ZeroDivisionError: division by zero"
    )

    done = env.run("purge", "no-such-queue", "-m", str(env.module))
    assert done.returncode == 2
    assert _one_error_line(done).startswith(
        "geboost purge: error: no booster has queue 'no-such-queue'"
    )
    assert "Traceback" not in done.stderr

    done = env.run("status")
    assert done.returncode == 2
    assert _one_error_line(done).startswith("geboost status: error: no module given")

    done = env.run("worker", str(env.module), "--scheduler")
    assert done.returncode == 2
    assert "none of the boosters has a schedule" in _one_error_line(done)


def test_a_broker_that_does_not_answer(env: Env) -> None:
    env.env["CLI_TEST_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["status", str(env.module)], ["worker", str(env.module)]):
        done = env.run(*args)
        assert done.returncode == 1, done.stderr
        line = _one_error_line(done)
        assert f"queue '{env.queue}'" in line and "BrokerConnectionError" in line, line
        assert "Traceback" not in done.stderr


def _socket_count(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process if it still runs, and its children with it: a failed test must not
    leave orphaned workers that keep writing to the shared Redis after the cleanup ran."""
    try:
        children = _children(proc.pid) if proc.poll() is None else []
    except OSError:
        children = []
    stop_process(proc, signal.SIGKILL)  # type: ignore[arg-type]
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10)


def test_supervisor_restarts_a_killed_child_and_loses_no_task(env: Env) -> None:
    n = 600
    env.env["CLI_TEST_SLEEP_S"] = "0.02"
    push(env, list(range(n)))
    proc = env.start("worker", str(env.module), "--processes", "2")
    try:
        assert wait_for(lambda: len(_children(proc.pid)) == 2, 30)
        first = _children(proc.pid)
        # Both children consume before one is killed: a child killed while still starting
        # would never log "consuming", and the count below would be off by one.
        assert wait_for(lambda: _read(proc).count(f"consuming {env.queue}") == 2, 30)
        assert wait_for(lambda: len(env.ran()) >= 50, 60)
        os.kill(first[0], signal.SIGKILL)
        assert wait_for(lambda: len(set(_children(proc.pid)) - set(first)) == 1, 30), _children(
            proc.pid
        )
        assert wait_for(lambda: len(set(env.ran())) == n, 120), len(set(env.ran()))
        # The supervisor imported none of the user's modules and holds no socket.
        importers = lambda: {int(p) for p in env.imports.read_text().split()}  # noqa: E731
        assert wait_for(lambda: len(importers()) == 3, 30)  # two children, the restarted one
        assert proc.pid not in importers()
        assert wait_for(lambda: _read(proc).count(f"consuming {env.queue}") == 3, 30)
        assert _socket_count(proc.pid) == 0
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        _kill_tree(proc)
    err = _stderr_seen[proc.pid] + err
    assert proc.returncode == 0, err
    assert sorted(set(env.ran())) == list(range(n))  # at least once each, none lost
    assert "died (signal SIGKILL)" in err
    for pid in children:
        assert f"worker {pid} stopped" in err  # stopped gracefully, not killed
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_multi_process_consume_from_a_script(env: Env) -> None:
    script = env.tmp / "runme.py"
    script.write_text(
        TASKS + "\nif __name__ == '__main__':\n    raise SystemExit("
        "work_booster.multi_process_consume(2))\n"
    )
    push(env, list(range(100)))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env.env,
        cwd=env.tmp,
    )
    try:
        assert wait_for(lambda: len(set(env.ran())) == 100, 60), len(env.ran())
        # Both children consume (a child still importing when SIGTERM comes just dies).
        assert wait_for(lambda: _read(proc).count("consuming " + env.queue) == 2, 30)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 0, err
    # The script (its own process) and its two children imported it; no child ran __main__
    # (which would have started a supervisor of its own: more importers, more consumers).
    assert len(env.imports.read_text().split()) == 3
    err = _stderr_seen[proc.pid] + err
    assert err.count("consuming " + env.queue) == 2
    assert err.count("stopped") >= 2


def test_a_second_signal_kills_the_children(env: Env) -> None:
    env.env["CLI_TEST_SLEEP_S"] = "120"  # calls that would hold a graceful stop for 30 s
    push(env, [1, 2])
    b = env.booster()
    proc = env.start("worker", str(env.module), "--processes", "2")
    try:
        assert wait_for(lambda: b.in_flight_count() == 2, 30)  # type: ignore[attr-defined]
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stopping its worker processes" in _read(proc), 10)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        _kill_tree(proc)
        b.broker.close()  # type: ignore[attr-defined]
    assert proc.returncode == 1, err
    assert "second signal: killing the worker processes" in err
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert env.ran() == []


_stderr_seen: dict[int, str] = {}


def _read(proc: subprocess.Popen[str]) -> str:
    """What the process wrote on stderr so far (read without blocking; kept for the caller)."""
    import fcntl

    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536).decode()
    except BlockingIOError:
        chunk = ""
    _stderr_seen[proc.pid] = _stderr_seen.get(proc.pid, "") + chunk
    return _stderr_seen[proc.pid]


def test_the_scrape_example_through_geboost_worker_processes(env: Env) -> None:
    env.env.update(SCRAPE_BROKER="redis", SCRAPE_QUEUE=env.queue, SCRAPE_CONCURRENCY="50")
    log = env.tmp / "workers.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [*geboost_cmd(), "worker", "examples/scrape.py", "--processes", "2"],
            stdout=log_file,
            stderr=log_file,
            env=env.env,
            cwd=ROOT,
        )
        try:
            assert wait_for(lambda: log.read_text().count(f"consuming {env.queue}") == 2, 30)
            pushed = subprocess.run(
                [sys.executable, "examples/scrape.py", "--fleet", "--n", "300"],
                capture_output=True,
                text=True,
                env=env.env,
                cwd=ROOT,
                timeout=120,
            )
            assert pushed.returncode == 0, pushed.stderr[-2000:]
            assert "fetched 300 of 300 URLs" in pushed.stdout, pushed.stdout
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
        finally:
            _kill_tree(proc)


def test_a_worker_stopped_while_importing_exits_0(env: Env) -> None:
    slow = env.tmp / "slow.py"
    slow.write_text(
        "import os, time\n"
        "open(os.environ['CLI_TEST_IMPORTS'], 'a').write('importing\\n')\n"
        "time.sleep(60)\n"
    )
    proc = env.start("worker", str(slow))
    try:
        assert wait_for(lambda: env.imports.exists(), 30)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 0, err
    assert "stopped before consuming (SIGTERM)" in err


def test_status_watch_redraws_until_ctrl_c(env: Env) -> None:
    out = env.tmp / "watch.txt"
    with out.open("w") as out_file:
        proc = subprocess.Popen(
            [*geboost_cmd(), "status", "--watch", str(env.module)],
            stdout=out_file,
            stderr=subprocess.PIPE,
            text=True,
            env=env.env,
            cwd=env.tmp,
        )
        try:
            redraw = "\x1b[H\x1b[2JQUEUE"
            assert wait_for(lambda: out.read_text().count(redraw) >= 2, 20), out.read_text()
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=10)
        finally:
            _kill_tree(proc)
    assert proc.returncode == 0, err
    assert f"\n{env.queue} " in out.read_text()


def test_pause_resume_and_the_fleet_columns_of_status(env: Env) -> None:
    m = ["-m", str(env.module)]
    proc = env.start("worker", str(env.module))
    try:

        def row() -> list[str]:
            done = env.run("status", str(env.module))
            assert done.returncode == 0, done.stderr
            return done.stdout.splitlines()[1].split()

        assert wait_for(lambda: row()[-1] == "1", 30)  # the worker registered itself
        paused = env.run("pause", env.queue, *m)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.startswith(f"paused {env.queue}")
        assert row()[-2:] == ["yes", "1"]
        push(env, [1, 2, 3])
        resumed = env.run("resume", env.queue, *m)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.startswith(f"resumed {env.queue}")
        assert wait_for(lambda: sorted(env.ran()) == [1, 2, 3], 30)
        assert row()[-2:] == ["no", "1"]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=40)
        assert proc.returncode == 0
        assert wait_for(lambda: row()[-1] == "0", 30)  # a stopped worker leaves the registry
    finally:
        _kill_tree(proc)


def test_worker_scheduler_pushes_the_module_schedules(env: Env) -> None:
    env.env["CLI_TEST_EVERY_S"] = "1"
    proc = env.start("worker", str(env.module), "--scheduler")
    try:
        # every(1, 7): one call of work(7) per second, pushed by the worker's scheduler.
        assert wait_for(lambda: env.ran().count(7) >= 2, 30)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=40)
        assert proc.returncode == 0
    finally:
        _kill_tree(proc)

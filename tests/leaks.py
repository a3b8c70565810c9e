"""What a test session left behind on the shared brokers: Redis keys (every database) and
RabbitMQ queues (every vhost) whose names carry this session's tag (``SESSION_TAG``).

Other developers run tests against the same servers at the same time, so a plain before/after
comparison would blame their keys on us; names with this session's random tag can only be ours,
and the tag is new, so at the start of the session there are none: whatever carries it at the
end was left by this session.
"""

from __future__ import annotations

import shutil
import subprocess

import msgspec

from tests.support import SESSION_TAG, port_open

REDIS_PORT = 6379
RABBITMQ_PORT = 5672


class Leftovers(msgspec.Struct):
    """Names found, per place: ``"redis db0"`` or ``"rabbitmq vhost /"`` -> sorted names."""

    found: dict[str, list[str]] = msgspec.field(default_factory=dict)
    problems: list[str] = msgspec.field(default_factory=list)
    """Brokers that answer but could not be listed (the check is then incomplete)."""

    def names(self) -> set[tuple[str, str]]:
        return {(place, name) for place, names in self.found.items() for name in names}


def _redis_keys(tag: str, out: Leftovers) -> None:
    if not port_open("127.0.0.1", REDIS_PORT):
        return
    import redis

    try:
        client = redis.Redis(port=REDIS_PORT, socket_timeout=10)
        databases = [int(db[2:]) for db in client.info("keyspace")]
        client.close()
        for db in databases:
            client = redis.Redis(port=REDIS_PORT, db=db, socket_timeout=10)
            keys = sorted(k.decode(errors="replace") for k in client.scan_iter(f"*{tag}*", 1000))
            client.close()
            if keys:
                out.found[f"redis db{db}"] = keys
    except redis.RedisError as exc:
        out.problems.append(f"could not list Redis keys: {exc!r}")


def _rabbitmqctl(*args: str) -> list[str]:
    done = subprocess.run(
        ["rabbitmqctl", *args, "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"exit status {done.returncode}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _rabbitmq_queues(tag: str, out: Leftovers) -> None:
    if not port_open("127.0.0.1", RABBITMQ_PORT):
        return
    if shutil.which("rabbitmqctl") is None:
        out.problems.append("RabbitMQ answers but rabbitmqctl is not installed: queues unchecked")
        return
    try:
        for vhost in _rabbitmqctl("list_vhosts", "--no-table-headers", "name"):
            listed = _rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name")
            queues = sorted(q for q in listed if tag in q)
            if queues:
                out.found[f"rabbitmq vhost {vhost}"] = queues
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        out.problems.append(f"could not list RabbitMQ queues with rabbitmqctl: {exc}")


def find(tag: str = SESSION_TAG) -> Leftovers:
    """Every key and queue on the shared brokers whose name contains ``tag``."""
    out = Leftovers()
    _redis_keys(tag, out)
    _rabbitmq_queues(tag, out)
    return out


def remove(leftovers: Leftovers) -> None:
    """Delete what a session left (tagged names only), so a leak does not pile up on the
    shared servers; called after the leak was reported."""
    for place, names in leftovers.found.items():
        if place.startswith("redis db"):
            import redis

            client = redis.Redis(port=REDIS_PORT, db=int(place.removeprefix("redis db")))
            client.delete(*names)
            client.close()
        else:
            vhost = place.removeprefix("rabbitmq vhost ")
            for name in names:
                _rabbitmqctl("delete_queue", "-p", vhost, name)


def report(leftovers: Leftovers) -> str:
    lines = [
        f"the tests of this session (tag {SESSION_TAG}) left "
        f"{len(leftovers.names())} key(s)/queue(s) on the shared brokers:"
    ]
    for place, names in sorted(leftovers.found.items()):
        lines.append(f"  {place}: {', '.join(names)}")
    return "\n".join(lines)

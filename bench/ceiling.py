"""The machine's ceiling: plain redis-py and plain pika loops, no framework, no gevent.

    python bench/ceiling.py '<json spec>'

Started by ``bench/run.py`` in its own process (not monkey-patched), it moves the same ``n``
messages as the geboost runs (the same JSON envelope, ``args`` = ``[i]``) and prints one line
``RESULT {...}``. Consumers decode each body and record its index, so their runs are checked
like the geboost ones.

Modes (``spec["mode"]``):
- ``redis``: LPUSH one at a time; one variadic LPUSH per 1,000; a pipeline of 1,000 single
  LPUSHes; then consume with LMOVE + LREM (the reliable-queue ack), one at a time and pipelined
  100 at a time.
- ``rabbitmq``: publish one at a time waiting for each confirm; publish 1,000 then wait for their
  confirms; consume with prefetch 100 and one ``basic_ack`` per message.
- ``cleanup``: delete the run's Redis keys (by prefix) and RabbitMQ queues (by name).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import pika
import redis

BATCH = 1000
CONSUME_PIPELINE = 100
PREFETCH = 100


def bodies(n: int) -> list[bytes]:
    return [
        msgspec.json.encode(
            {"task_id": uuid.uuid4().hex, "args": [i], "kwargs": {}, "publish_time": time.time()}
        )
        for i in range(n)
    ]


def index_of(body: bytes) -> int:
    return int(msgspec.json.decode(body)["args"][0])


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def checked(seen: bytearray, elapsed_s: float) -> dict[str, Any]:
    missing = seen.count(0)
    return {
        "ok": missing == 0 and all(c == 1 for c in seen),
        "missing": missing,
        "rate_per_s": len(seen) / elapsed_s,
    }


# --------------------------------------------------------------------- Redis
def redis_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    n, queue = spec["n"], spec["queue"]
    host, _, port = spec.get("broker_url", "127.0.0.1:6379").partition(":")
    client = redis.Redis(host=host, port=int(port or 6379))
    processing = queue + ".processing"
    client.delete(queue, processing)

    def lpush_single() -> None:
        for body in bodies(n):
            client.lpush(queue, body)

    def lpush_variadic() -> None:
        all_bodies = bodies(n)
        for start in range(0, n, BATCH):
            client.lpush(queue, *all_bodies[start : start + BATCH])

    def lpush_pipelined() -> None:
        all_bodies = bodies(n)
        for start in range(0, n, BATCH):
            pipe = client.pipeline(transaction=False)
            for body in all_bodies[start : start + BATCH]:
                pipe.lpush(queue, body)
            pipe.execute()

    results: dict[str, Any] = {}
    for name, publish in (
        ("lpush", lpush_single),
        ("lpush_variadic", lpush_variadic),
        ("lpush_pipelined", lpush_pipelined),
    ):
        client.delete(queue)
        results[name] = {"ok": True, "rate_per_s": n / timed(publish)}
        results[name]["ok"] = client.llen(queue) == n
    # Consume what the last publish left: one at a time, then refill and pipelined.
    results["lmove_lrem"] = redis_consume_single(client, queue, processing, n)
    client.lpush(queue, *bodies(n))
    results["lmove_lrem_pipelined"] = redis_consume_pipelined(client, queue, processing, n)
    client.delete(queue, processing)
    return results


def redis_consume_single(
    client: redis.Redis, queue: str, processing: str, n: int
) -> dict[str, Any]:
    seen = bytearray(n)
    started = time.perf_counter()
    while True:
        body: bytes | None = client.lmove(queue, processing, "RIGHT", "LEFT")  # type: ignore[assignment]
        if body is None:
            break
        seen[index_of(body)] += 1
        client.lrem(processing, 1, body)  # type: ignore[arg-type]
    return checked(seen, time.perf_counter() - started)


def redis_consume_pipelined(
    client: redis.Redis, queue: str, processing: str, n: int
) -> dict[str, Any]:
    seen = bytearray(n)
    started = time.perf_counter()
    while True:
        pipe = client.pipeline(transaction=False)
        for _ in range(CONSUME_PIPELINE):
            pipe.lmove(queue, processing, "RIGHT", "LEFT")
        moved = [body for body in pipe.execute() if body is not None]
        if not moved:
            break
        for body in moved:
            seen[index_of(body)] += 1
        pipe = client.pipeline(transaction=False)
        for body in moved:
            pipe.lrem(processing, 1, body)
        pipe.execute()
    return checked(seen, time.perf_counter() - started)


# --------------------------------------------------------------------- RabbitMQ
_PERSISTENT = pika.BasicProperties(delivery_mode=2)


def rabbit_connection(spec: dict[str, Any]) -> pika.BlockingConnection:
    host, _, port = (spec.get("broker_url") or "127.0.0.1:5672").partition(":")
    return pika.BlockingConnection(pika.ConnectionParameters(host=host, port=int(port or 5672)))


def rabbit_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    n, queue = spec["n"], spec["queue"]
    connection = rabbit_connection(spec)
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.queue_purge(queue)
        channel.confirm_delivery()  # BlockingChannel: basic_publish waits for its confirm

        def publish_single() -> None:
            for body in bodies(n):
                channel.basic_publish("", queue, body, properties=_PERSISTENT)

        results: dict[str, Any] = {}
        results["publish_confirmed"] = {"rate_per_s": n / timed(publish_single)}
        results["publish_confirmed"]["ok"] = (
            channel.queue_declare(queue, durable=True, passive=True).method.message_count == n
        )
        channel.queue_purge(queue)
        elapsed_s = timed(lambda: publish_batch_confirmed(connection, queue, bodies(n)))
        results["publish_batch_confirmed"] = {"ok": True, "rate_per_s": n / elapsed_s}
        results["consume_prefetch"] = rabbit_consume(connection, queue, n)
        channel.queue_delete(queue)
        return results
    finally:
        connection.close()


def publish_batch_confirmed(
    connection: pika.BlockingConnection, queue: str, all_bodies: list[bytes]
) -> None:
    """Write BATCH messages, then wait for their confirms (RabbitMQ acks them with multiple).

    pika's BlockingChannel waits after every message; its asynchronous core (``_impl``) does not.
    """
    impl = connection.channel()._impl
    unconfirmed: set[int] = set()
    state = {"selected": False, "next_tag": 1}

    def wake() -> None:
        connection.call_later(0, lambda: None)  # makes process_data_events return

    def on_confirm(frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            raise RuntimeError(f"rabbitmq nacked delivery tag {method.delivery_tag}")
        if method.multiple:
            unconfirmed.difference_update([t for t in unconfirmed if t <= method.delivery_tag])
        else:
            unconfirmed.discard(method.delivery_tag)
        if not unconfirmed:
            wake()

    def on_selected(_frame: Any) -> None:
        state["selected"] = True
        wake()

    impl.confirm_delivery(ack_nack_callback=on_confirm, callback=on_selected)
    while not state["selected"]:
        connection.process_data_events(time_limit=1)
    for start in range(0, len(all_bodies), BATCH):
        for body in all_bodies[start : start + BATCH]:
            impl.basic_publish("", queue, body, properties=_PERSISTENT)
            unconfirmed.add(state["next_tag"])
            state["next_tag"] += 1
        while unconfirmed:
            connection.process_data_events(time_limit=1)


def rabbit_consume(connection: pika.BlockingConnection, queue: str, n: int) -> dict[str, Any]:
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    seen = bytearray(n)
    progress = {"count": 0, "first": 0.0, "last": 0.0}

    def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        if not progress["count"]:
            progress["first"] = time.perf_counter()
        seen[index_of(body)] += 1
        ch.basic_ack(method.delivery_tag)
        progress["count"] += 1
        progress["last"] = time.perf_counter()
        if progress["count"] >= n:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    return checked(seen, progress["last"] - progress["first"])


# --------------------------------------------------------------------- cleanup
def cleanup(spec: dict[str, Any]) -> dict[str, Any]:
    deleted = 0
    if spec.get("redis_prefix"):
        try:
            client = redis.Redis(host="127.0.0.1", port=6379)
            prefix = spec["redis_prefix"]
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            # geboost's bookkeeping of each queue (leases, held lists) outlives the queue.
            keys += client.scan_iter(match=f"geboost:{prefix}*", count=1000)
            deleted += client.delete(*keys) if keys else 0
        except redis.RedisError:
            pass
    if spec.get("rabbit_queues"):
        try:
            connection = rabbit_connection({})
            channel = connection.channel()
            for name in spec["rabbit_queues"]:
                channel.queue_delete(name)
                deleted += 1
            connection.close()
        except pika.exceptions.AMQPError:
            pass
    return {"ok": True, "deleted": deleted}


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "redis": redis_ceiling,
    "rabbitmq": rabbit_ceiling,
    "cleanup": cleanup,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    print("RESULT " + json.dumps(MODES[spec["mode"]](spec)), flush=True)


if __name__ == "__main__":
    main()

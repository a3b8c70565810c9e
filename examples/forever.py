"""The Go example's shape: consume forever on Redis, like ``for {time.Sleep(10*time.Second)}``.

Needs Redis on localhost:6379. Stop it with Ctrl-C or SIGTERM: running calls finish and
messages not yet started go back to the queue.
    python examples/forever.py
"""

# isort: off
import geboost  # noqa: F401  first: gevent patching
# isort: on

import time

from geboost import BoostOptions, BrokerConfig, BrokerKind, new_booster


def add(x: int, y: int) -> int:
    result = x + y
    print(f"{x} + {y} = {result}")
    time.sleep(1)
    return result


def print_value(a: object) -> None:
    print(f"value: {a}")


redis = BrokerConfig(broker_url="localhost:6379")
add_booster = new_booster(
    BoostOptions(
        queue_name="queue_test2",
        consume_func=add,
        broker_kind=BrokerKind.REDIS,
        conn_num=5,
        concurrent_num=50,
        qps_limit=500,
        max_retries=3,
        broker_config=redis,
    )
)
print_value_booster = new_booster(
    BoostOptions(
        queue_name="queue_test33",
        consume_func=print_value,
        broker_kind=BrokerKind.REDIS,
        conn_num=5,
        concurrent_num=20,
        qps_limit=500,
        max_retries=3,
        broker_config=redis,
    )
)

if __name__ == "__main__":
    add_booster.consume()  # consume forever in the background
    print_value_booster.consume()
    add_booster.push(1, 2)
    print_value_booster.push("hello world")
    add_booster.join()  # blocks until a signal stops the boosters
    print_value_booster.join()

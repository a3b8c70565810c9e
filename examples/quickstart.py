"""The Go example, ported: two functions, two queues, concurrent, rate-limited, retried.

Runs on the in-process memory broker, so it needs no server, and ends once its tasks ran.
    python examples/quickstart.py
"""

# isort: off
import geboost  # first: patches the standard library so time.sleep below is cooperative
# isort: on

import time

from geboost import BoostOptions, BrokerKind, new_booster


def add(x: int, y: int) -> int:
    result = x + y
    print(f"add: {x} + {y} = {result}")
    time.sleep(1)  # 100 calls of 1 s each, 50 at a time: about 2 s in all
    return result


def print_value(a: object) -> None:
    print(f"print_value: {a}")


add_booster = new_booster(
    BoostOptions(
        queue_name="queue_test2",
        consume_func=add,
        broker_kind=BrokerKind.MEMORY,
        conn_num=5,  # connections pulling messages, not one per greenlet
        concurrent_num=50,  # greenlets running add at once
        qps_limit=500,  # calls started per second
        max_retries=3,
    )
)
print_value_booster = new_booster(
    BoostOptions(
        queue_name="queue_test33",
        consume_func=print_value,
        broker_kind=BrokerKind.MEMORY,
        concurrent_num=20,
        qps_limit=500,
    )
)

if __name__ == "__main__":
    started = time.monotonic()
    add_booster.consume()  # returns at once; consumption runs in the background
    print_value_booster.consume()
    for i in range(100):
        add_booster.push(i, i * 2)
        print_value_booster.push(f"hello world {i}")
    add_booster.wait_until_idle()
    print_value_booster.wait_until_idle()
    add_booster.stop()
    print_value_booster.stop()
    print(f"done: 200 tasks in {time.monotonic() - started:.1f} s ({geboost.__version__})")

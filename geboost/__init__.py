"""geboost: turn any function into a distributed, rate-limited, retrying task.

Importing geboost monkey-patches the standard library with gevent (once, and not if the
application already did), so that blocking I/O inside consuming functions is cooperative.
Import it first, before modules that open sockets or import ``ssl``.
"""

from geboost._patch import ensure_patched

ensure_patched()

from geboost.booster import Booster, PushResult, boost, new_booster  # noqa: E402
from geboost.brokers.base import (  # noqa: E402
    Broker,
    BrokerConfig,
    Delivery,
    Receiver,
    available_broker_kinds,
    register_broker,
)
from geboost.cli.supervisor import run_workers  # noqa: E402
from geboost.errors import (  # noqa: E402
    BrokerAuthenticationError,
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    GeboostError,
    MessageRefusedError,
    PublishError,
    StateStoreError,
    UnknownBrokerError,
)
from geboost.message import DeadLetter, TaskMessage  # noqa: E402
from geboost.options import BoostOptions, BrokerKind, PushOptions  # noqa: E402
from geboost.registry import get_booster, registered_boosters  # noqa: E402
from geboost.results import AsyncResult, ResultTimeout, TaskFailed  # noqa: E402
from geboost.schedule import Cron, Every, Schedule, Scheduler  # noqa: E402
from geboost.state.workers import WorkerInfo, consumer_count, list_workers  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "BoostOptions",
    "Booster",
    "Broker",
    "BrokerAuthenticationError",
    "BrokerConfig",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerKind",
    "ConfigurationError",
    "Cron",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "Every",
    "GeboostError",
    "MessageRefusedError",
    "PublishError",
    "PushOptions",
    "PushResult",
    "Receiver",
    "ResultTimeout",
    "Schedule",
    "Scheduler",
    "StateStoreError",
    "TaskFailed",
    "TaskMessage",
    "UnknownBrokerError",
    "WorkerInfo",
    "available_broker_kinds",
    "boost",
    "consumer_count",
    "get_booster",
    "list_workers",
    "new_booster",
    "register_broker",
    "registered_boosters",
    "run_workers",
]

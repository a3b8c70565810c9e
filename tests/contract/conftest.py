"""One set of promises, checked on every broker: memory always, Redis and RabbitMQ when their
servers answer (skipped on a developer's machine without them, failed in CI)."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from geboost import BrokerConfig, BrokerKind
from geboost.brokers.base import get_broker_factory
from tests.support import cleanup_queues, port_open, skip_or_fail


class BrokerSpec(msgspec.Struct, frozen=True):
    kind: BrokerKind
    config: BrokerConfig


def _memory() -> BrokerSpec:
    return BrokerSpec(BrokerKind.MEMORY, BrokerConfig(broker_url=f"contract-{uuid.uuid4().hex}"))


def _network(kind: BrokerKind, port: int) -> BrokerSpec:
    if not port_open("127.0.0.1", port):
        skip_or_fail(f"no {kind.value} server answers on 127.0.0.1:{port}")
    return BrokerSpec(kind, BrokerConfig(broker_url=f"127.0.0.1:{port}"))


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def spec(request: pytest.FixtureRequest) -> BrokerSpec:
    if request.param == "memory":
        return _memory()
    if request.param == "redis":
        return _network(BrokerKind.REDIS, 6379)
    return _network(BrokerKind.RABBITMQ, 5672)


@pytest.fixture
def broker(spec: BrokerSpec, queue_name: str):  # type: ignore[no-untyped-def]
    b = get_broker_factory(spec.kind)(spec.config)
    yield b
    cleanup_queues(b, queue_name)
    b.close()

"""Brokers: the protocol and registry in ``base``, one module per broker."""

from geboost.brokers.base import (
    Broker,
    BrokerConfig,
    BrokerFactory,
    Delivery,
    Receiver,
    available_broker_kinds,
    register_broker,
)

__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerFactory",
    "Delivery",
    "Receiver",
    "available_broker_kinds",
    "register_broker",
]

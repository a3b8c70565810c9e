"""One exception tree for everything geboost raises.

Broker modules translate their driver's exceptions (redis-py, pika, ...) into these at the
boundary, so user code only ever needs to catch ``GeboostError`` or one of its children.
"""

from __future__ import annotations

__all__ = [
    "BrokerConnectionError",
    "BrokerError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "GeboostError",
    "PublishError",
    "UnknownBrokerError",
]


class GeboostError(Exception):
    """Root of every exception geboost raises on purpose."""


class ConfigurationError(GeboostError, ValueError):
    """An option or broker setting is invalid; the message names the field and the value."""


class UnknownBrokerError(ConfigurationError):
    """``broker_kind`` names no registered broker."""


class BrokerError(GeboostError):
    """A broker refused or failed an operation."""


class BrokerConnectionError(BrokerError):
    """The broker could not be reached or the connection broke.

    Brokers raise this after translating their driver's exception and after dropping the broken
    connection, so that the next call opens a fresh one.
    """


class PublishError(BrokerError):
    """A push could not be delivered after every retry; the message was NOT accepted.

    For a batch (``push_many``), ``accepted`` counts the messages of earlier batches that were.
    """

    accepted: int = 0


class EncodeError(GeboostError, TypeError):
    """The arguments of a push cannot be encoded in the wire format (JSON)."""


class DecodeError(GeboostError, ValueError):
    """A message body is not a valid geboost envelope, or its call can never run.

    ``task_id`` is the envelope's id when the envelope itself could be read.
    """

    task_id: str = ""

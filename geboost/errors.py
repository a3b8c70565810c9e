"""One exception tree for everything geboost raises.

Broker modules translate their driver's exceptions (redis-py, pika, ...) into these at the
boundary, so user code only ever needs to catch ``GeboostError`` or one of its children.
"""

from __future__ import annotations

__all__ = [
    "BrokerAuthenticationError",
    "BrokerConnectionError",
    "BrokerError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "GeboostError",
    "MessageRefusedError",
    "PublishError",
    "StateStoreError",
    "UnknownBrokerError",
]


class GeboostError(Exception):
    """Root of every exception geboost raises on purpose."""


class ConfigurationError(GeboostError, ValueError):
    """An option or broker setting is invalid; the message names the field and the value."""


class UnknownBrokerError(ConfigurationError):
    """``broker_kind`` names no registered broker."""


class BrokerError(GeboostError):
    """A broker refused or failed an operation.

    For a failed publish of a batch, ``accepted`` is how many of its LEADING messages the broker
    had accepted (confirmed) before the failure: a retry sends only the ones after them.
    """

    accepted: int = 0


class BrokerConnectionError(BrokerError):
    """The broker could not be reached or the connection broke.

    Brokers raise this after translating their driver's exception and after dropping the broken
    connection, so that the next call opens a fresh one.
    """


class BrokerAuthenticationError(BrokerError):
    """The broker refused the credentials (or the user's access to the vhost/database).

    Not a connection error: retrying a push at once cannot fix it, so ``push`` fails at once.
    A consumer keeps trying every ``reconnect_interval_s`` (someone may fix the account).
    """


class MessageRefusedError(BrokerError):
    """The broker refused a message for what it is (too large, not allowed, ...).

    Sending the same message again would be refused again, so ``push`` does not retry it.
    ``index`` is the refused message's position in the published batch when known (else -1).
    """

    index: int = -1


class PublishError(BrokerError):
    """A push failed after its retries (or at once: refused message, refused credentials).

    ``accepted`` counts the messages the broker confirmed: for ``push_many``, every message of
    the earlier batches plus the confirmed leading part of the failed batch. The items from
    index ``accepted`` on were refused or never confirmed; after a lost connection, one written
    but not yet confirmed may still have reached the queue (at-least-once).
    """

    accepted: int = 0


class EncodeError(GeboostError, TypeError):
    """The arguments of a push cannot be encoded in the wire format (JSON)."""


class DecodeError(GeboostError, ValueError):
    """A message body is not a valid geboost envelope, or its call can never run.

    ``task_id`` is the envelope's id when the envelope itself could be read.
    """

    task_id: str = ""


class StateStoreError(GeboostError):
    """The state store (results, pause flags, dedupe marks) failed or could not be reached.

    Raised by ``geboost.state`` after translating the driver's exception (redis-py's), never
    the driver's own.
    """

"""The two shapes that cross the bus boundary: a message read from Kafka and one to publish."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class IncomingMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Mapping[str, bytes] = field(default_factory=dict)


class PhiSafeError(Exception):
    """An error whose message is known to carry no PHI (tags, keywords, limits, never values).
    Only these messages reach dead-letter headers, logs and traces; other errors show their type."""


class TransientError(PhiSafeError):
    """A failure that may succeed on retry (a server down, a timeout): the message is not committed."""


class PermanentError(PhiSafeError):
    """An input that can never succeed. Handlers usually turn these into quarantine events themselves;
    one that escapes goes to the dead-letter topic."""


SHOWN_CHARACTERS = 64  # ids are at most 63; a longer value is a mistake, and is not echoed whole


def shown(value: str) -> str:
    """`value` as an error message quotes it back: repr, cut to SHOWN_CHARACTERS with its length said. A
    100 kB id echoed whole made the reply's metadata too large for gRPC, and the caller got
    RESOURCE_EXHAUSTED instead of the reason."""
    if len(value) <= SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:SHOWN_CHARACTERS]!r}… ({len(value)} characters)"

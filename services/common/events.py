"""Building and reading the protobuf events that travel on the topics."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from google.protobuf.message import Message

from services.common.messages import OutgoingMessage
from services.proto_gen.imx.v1 import events_pb2

EVENT_TYPE_HEADER = "imx-event-type"


def event_id(*parts: str) -> str:
    """Deterministic id: the same inputs and decision give the same id on a replay."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def now_ms() -> int:
    return int(time.time() * 1000)


def event_message(topic: str, event: Message, study_uid: str) -> OutgoingMessage:
    """Keyed by StudyInstanceUID so a study stays in order on one partition."""
    return OutgoingMessage(
        topic=topic,
        value=event.SerializeToString(deterministic=True),
        key=study_uid.encode() if study_uid else None,
        headers={EVENT_TYPE_HEADER: type(event).__name__.encode()},
    )


def derived_meta(
    kind: str, parent: events_pb2.EventMeta, *decision: str, clock: Callable[[], int] = now_ms
) -> events_pb2.EventMeta:
    """Meta of an event derived from `parent`: a deterministic id from the parent's id, what kind of
    event this is and the decision taken (e.g. the partner), the parent as cause, ingest time carried."""
    return events_pb2.EventMeta(
        event_id=event_id(kind, parent.event_id, *decision),
        causation_id=parent.event_id,
        occurred_at_ms=clock(),
        ingested_at_ms=parent.ingested_at_ms,
    )

"""The stored objects the pipeline's dead letters name, which the blob lifecycle keeps for as long as
the dead letters are kept.

A dead letter is an accepted instance's event that a stage could not process: its sender heard
"stored", and an operator replays it once the defect is fixed (`imx dlq replay`). The dead-letter
topic keeps its records until they are deleted (`KEPT_RETENTION_MS`), but the objects they name
went with the blob lifecycle's retention (seven days since last written), and a replay after that
found nothing to send. `blobs_named` reads the objects an event names from its own fields (every
`BlobRef` in it, at any depth: the instance's object, a de-identified copy's source), so a new event
type needs no change here; `DeadLetterBlobs` reads the whole topic for the lifecycle.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.proto_gen.imx.v1 import events_pb2

READ_TIMEOUT_S = 60.0  # the whole topic, once per collection: a broker that does not answer skips the round
_BLOB_REF = events_pb2.BlobRef.DESCRIPTOR


class DeadLettersUnread(RuntimeError):
    """The dead-letter topic could not be read whole: nothing may be judged unowed on a guess."""


def blobs_named(headers: Mapping[str, bytes], value: bytes) -> set[str]:
    """SHA-256 of every object the event in a dead letter names (pure). Nothing for a value that was
    dropped for its size, an unknown event type or one that does not decode: such a letter names no
    object this can know of."""
    event_class = getattr(events_pb2, headers.get(EVENT_TYPE_HEADER, b"").decode("ascii", "replace"), None)
    if not value or not isinstance(event_class, type) or not issubclass(event_class, Message):
        return set()
    try:
        event = event_class.FromString(value)
    except DecodeError:
        return set()
    return set(_blob_ids(event))


def _blob_ids(message: Message) -> Iterable[str]:
    if message.DESCRIPTOR is _BLOB_REF:
        if message.sha256:  # type: ignore[attr-defined]
            yield message.sha256  # type: ignore[attr-defined]
        return
    for field, value in message.ListFields():
        kind = field.message_type
        if field.type != FieldDescriptor.TYPE_MESSAGE or kind is None or kind.GetOptions().map_entry:
            continue  # maps of messages: none of the events has one
        for item in value if field.is_repeated else (value,):
            yield from _blob_ids(item)


class DeadLetterBlobs:
    """Reads the dead-letter topic from its first record to its end, without a consumer group (it
    commits nothing and takes no partition from anyone), and returns the objects its letters name.
    Raises DeadLettersUnread when the topic is unknown or not read to its end in time."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        client_config: Mapping[str, Any] | None = None,
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._config = dict(client_config or {})
        self._timeout_s = timeout_s

    def __call__(self) -> set[str]:
        deadline = time.monotonic() + self._timeout_s
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id="imx-dead-letter-blobs",
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=int(self._timeout_s * 1000) + 5000,
                **self._config,
            )
        except KafkaError as error:  # no broker at all: kafka-python fails the constructor
            raise DeadLettersUnread(f"no broker: {type(error).__name__}") from error
        try:
            return self._read(consumer, deadline)
        except KafkaError as error:
            raise DeadLettersUnread(type(error).__name__) from error
        finally:
            consumer.close()

    def _read(self, consumer: KafkaConsumer, deadline: float) -> set[str]:
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:  # the pipeline's services create it at start: unknown means not read
            raise DeadLettersUnread("the dead-letter topic is unknown to the broker")
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends = consumer.end_offsets(assigned)
        named: set[str] = set()
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise DeadLettersUnread(f"not read to its end within {self._timeout_s:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    headers = {k: (v or b"") for k, v in (record.headers or [])}
                    named |= blobs_named(headers, record.value or b"")
        return named

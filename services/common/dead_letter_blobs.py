"""The stored objects the pipeline's dead letters name, which the blob lifecycle keeps for as long as
the dead letters are kept.

A dead letter is an accepted instance's event that a stage could not process: its sender heard
"stored", and an operator replays it once the defect is fixed (`imx dlq replay`). The dead-letter topic
keeps its records for IMX_DEAD_LETTER_RETENTION_DAYS (30; the broker's seven days before), but the
objects they name went with the blob lifecycle's own retention (seven days since last written), and a
replay after that found nothing to send. `blobs_named` reads the objects an event names from its own
fields (every `BlobRef` in it, at any depth: the instance's object, a de-identified copy's source), so a
new event type needs no change here; `DeadLetterBlobs` reads the whole topic for each collection. A letter
an operator discarded (`imx dlq discard`, services/common/dead_letter_handling.py) keeps nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from kafka.consumer.fetcher import ConsumerRecord

from services.common.dead_letter_handling import position
from services.common.dead_letter_topic import STALLED_AFTER_S, DeadLetterTopic
from services.common.events import EVENT_TYPE_HEADER
from services.proto_gen.imx.v1 import events_pb2

_BLOB_REF = events_pb2.BlobRef.DESCRIPTOR


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
    """The objects named by every letter on the dead-letter topic (read whole, `DeadLetterTopic.read_whole`)
    but those `discarded` names (`<partition>:<offset>` to the letter's timestamp, read before the topic:
    one discarded meanwhile keeps its objects until the next collection). Raises IncompleteRead when the topic
    is not read to its end: nothing may be judged unowed on a guess."""

    def __init__(
        self,
        topic: DeadLetterTopic,
        stalled_after_s: float = STALLED_AFTER_S,
        discarded: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._topic = topic
        self._stalled_after_s = stalled_after_s
        self._discarded = discarded

    def __call__(self) -> set[str]:
        named: set[str] = set()
        discarded = self._discarded()

        def note(record: ConsumerRecord) -> None:
            if discarded.get(position(record.partition, record.offset)) == record.timestamp:
                return
            named.update(blobs_named({k: (v or b"") for k, v in (record.headers or [])}, record.value or b""))

        self._topic.read_whole(note, self._stalled_after_s)
        return named

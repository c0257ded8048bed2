"""What a failed publish means for the stage that made it.

The broker refuses some records for what they are: larger than their topic takes, or malformed.
Publishing such a record again cannot help, and another record can still go, so the input that made
it goes to the dead-letter topic (`imx dlq replay` sends it again once its topic takes it). Every
other failure leaves the input unread: the broker away (retriable), or a refusal of the stage itself
(no right to write the topic), which an operator mends without losing anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from services.common.messages import OutgoingMessage, PermanentError, TransientError

RECORD_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)


class BrokerUnavailable(TransientError):
    """Publishing failed because the broker could not be reached or did not answer in time."""


class RecordRefused(PermanentError):
    """The broker, or the client's own size check, refused a record for what it is."""


def publish_failure(errors: Sequence[KafkaError]) -> TransientError | RecordRefused:
    """The error a publish whose messages failed with `errors` raises. The broker away outweighs a
    refusal (that record may get through next time, or be refused then), and a refusal of the stage
    outweighs one of a record (the record may be fine once the stage may write)."""
    if any(error.retriable for error in errors):
        return BrokerUnavailable(f"publish failed: {_names(e for e in errors if e.retriable)}")
    if not all(isinstance(error, RECORD_REFUSALS) for error in errors):
        return TransientError(f"publish failed: {_names(e for e in errors if not isinstance(e, RECORD_REFUSALS))}")
    return RecordRefused(f"publish refused: {_names(errors)}")


def _names(errors: object) -> str:
    return ", ".join(sorted({type(error).__name__ for error in errors}))  # type: ignore[attr-defined]


def outputs_by_input(outputs: Sequence[OutgoingMessage], sources: Sequence[int]) -> dict[int, list[OutgoingMessage]]:
    """A batch's outputs grouped by the index of the input that made each, in the batch's order."""
    grouped: dict[int, list[OutgoingMessage]] = {}
    for output, source in zip(outputs, sources, strict=True):
        grouped.setdefault(source, []).append(output)
    return grouped

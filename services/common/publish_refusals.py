"""What a failed publish means for the stage that made it.

The broker refuses some records for what they are: larger than their topic takes, or malformed.
Publishing such a record again cannot help, and another record can still go, so the input that made
it goes to the dead-letter topic (`imx dlq replay` sends it again once its topic takes it). Every
other failure leaves the input unread: the broker away (retriable), or a refusal of the stage itself
(no right to write the topic), which an operator mends without losing anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka.errors import InvalidRecordError, KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from services.common.messages import OutgoingMessage, PermanentError, TransientError

# Not CorruptRecordError: on a produce it is a checksum broken in transit, which a retry mends.
RECORD_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


class BrokerUnavailable(TransientError):
    """Publishing failed because the broker could not be reached or did not answer in time."""


class RecordRefused(PermanentError):
    """The broker, or the client's own size check, refused a record for what it is."""


def publish_failure(errors: Sequence[KafkaError]) -> TransientError | RecordRefused:
    """The error a publish whose messages failed with `errors` raises. The broker away outweighs a
    refusal (that record may get through next time, or be refused then), and a refusal of the stage
    outweighs one of a record (the record may be fine once the stage may write). A bare KafkaError
    beside a refusal is that refusal's batch-mate: kafka-python fails the records of a batch the broker
    named others of as invalid with one ("... part of a batch which had one or more invalid records")."""
    if any(error.retriable for error in errors):
        return BrokerUnavailable(f"publish failed: {_names(e for e in errors if e.retriable)}")
    refusals = [error for error in errors if isinstance(error, RECORD_REFUSALS)]
    others = [error for error in errors if not isinstance(error, RECORD_REFUSALS) and type(error) is not KafkaError]
    if others or not refusals:
        return TransientError(f"publish failed: {_names(others or errors)}")
    return RecordRefused(f"publish refused: {_names(refusals)}")


def _names(errors: object) -> str:
    return ", ".join(sorted({type(error).__name__ for error in errors}))  # type: ignore[attr-defined]


def outputs_by_input(outputs: Sequence[OutgoingMessage], sources: Sequence[int]) -> dict[int, list[OutgoingMessage]]:
    """A batch's outputs grouped by the index of the input that made each, in the batch's order."""
    grouped: dict[int, list[OutgoingMessage]] = {}
    for output, source in zip(outputs, sources, strict=True):
        grouped.setdefault(source, []).append(output)
    return grouped

"""What a failed publish means for the stage that made it.

The broker refuses some records for what they are: larger than their topic takes, or malformed.
Publishing such a record again cannot help, and another record can still go, so the input that made
it goes to the dead-letter topic (`imx dlq replay` sends it again once its topic takes it). Every
other failure leaves the input unread: the broker away (retriable), or a refusal of the stage itself
(no right to write the topic), which an operator mends without losing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from kafka.errors import InvalidRecordError, KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from services.common.messages import OutgoingMessage, PermanentError, TransientError

K = TypeVar("K")
E = TypeVar("E", bound=BaseException)

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


def outputs_by_input(outputs: Sequence[OutgoingMessage], sources: Sequence[K]) -> dict[K, list[OutgoingMessage]]:
    """Messages grouped by what made each (`sources`, one per message), in their order."""
    grouped: dict[K, list[OutgoingMessage]] = {}
    for output, source in zip(outputs, sources, strict=True):
        grouped.setdefault(source, []).append(output)
    return grouped


def publish_apart(
    publish: Callable[[Sequence[OutgoingMessage]], None],
    messages: Sequence[OutgoingMessage],
    sources: Sequence[K],
    refusal: type[E],
) -> dict[K, E]:
    """Publish `messages` in one flush; when the broker refuses one for what it is (`refusal`, as the
    caller's `publish` raises it), publish each source's messages again on their own, since which record
    was refused is not known (its batch-mates fail with it). Returns the sources refused, each with its
    refusal; any other failure is raised. A message acknowledged before the refusal goes twice, under
    its deterministic id, which every stage drops."""
    try:
        publish(messages)
        return {}
    except refusal as error:
        grouped = outputs_by_input(messages, sources)
        if len(grouped) == 1:
            return {source: error for source in grouped}
    refused: dict[K, E] = {}
    for source, group in grouped.items():
        try:
            publish(group)
        except refusal as error:
            refused[source] = error
    return refused

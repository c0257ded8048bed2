from __future__ import annotations

from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from services.common.failures import is_transient
from services.common.messages import OutgoingMessage, TransientError
from services.common.publish_refusals import BrokerUnavailable, RecordRefused, outputs_by_input, publish_failure


def test_a_record_the_broker_refuses_for_what_it_is_is_a_refusal_not_worth_retrying() -> None:
    error = publish_failure([MessageSizeTooLargeError(), RecordListTooLargeError()])
    assert isinstance(error, RecordRefused) and not is_transient(error)
    assert str(error) == "publish refused: MessageSizeTooLargeError, RecordListTooLargeError"


def test_a_refusal_of_the_stage_itself_is_retried_until_an_operator_mends_it() -> None:
    error = publish_failure([TopicAuthorizationFailedError(), MessageSizeTooLargeError()])
    assert is_transient(error) and not isinstance(error, BrokerUnavailable)
    assert str(error) == "publish failed: TopicAuthorizationFailedError"


def test_the_broker_away_outweighs_any_refusal() -> None:
    for errors in ([KafkaTimeoutError()], [NotLeaderForPartitionError(), MessageSizeTooLargeError()]):
        assert isinstance(publish_failure(errors), BrokerUnavailable)


def test_outputs_are_grouped_by_the_record_that_made_them_in_order() -> None:
    outputs = [OutgoingMessage("t", bytes([n])) for n in range(4)]
    assert outputs_by_input(outputs, [0, 0, 2, 3]) == {0: outputs[:2], 2: [outputs[2]], 3: [outputs[3]]}


def test_a_refusals_batch_mates_are_part_of_it_and_a_corrupt_checksum_is_retried() -> None:
    """kafka-python fails the other records of a batch with a bare KafkaError when the broker names some
    as invalid; CorruptRecordError on a produce is damage in transit."""
    mates = publish_failure([InvalidRecordError(), KafkaError("part of a batch which had invalid records")])
    assert isinstance(mates, RecordRefused) and str(mates) == "publish refused: InvalidRecordError"
    assert isinstance(publish_failure([KafkaError("unexpected")]), TransientError)
    corrupt = publish_failure([CorruptRecordError()])
    assert not isinstance(corrupt, RecordRefused) and is_transient(corrupt)

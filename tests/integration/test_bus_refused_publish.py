"""Publishing against a real broker that refuses a record (larger than its topic takes)."""

from __future__ import annotations

import threading

import pytest

from services.common.bus import BusProducer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.publish_refusals import RecordRefused
from tests.integration.bus_helpers import (
    committed_and_end_offsets,
    limit_records,
    read_all,
    run_in_thread,
    stage_consumer,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_record_the_broker_refuses_does_not_stop_the_producer_publishing_others(
    kafka_bootstrap: str, unique_name: str
) -> None:
    small, other = f"{unique_name}.small", f"{unique_name}.other"
    limit_records(kafka_bootstrap, small, 1024, create=True)
    ensure_topics(kafka_bootstrap, [other], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    try:
        with pytest.raises(RecordRefused):
            producer.publish([OutgoingMessage(small, b"x" * 4096, b"k")], timeout_s=20)
        producer.publish([OutgoingMessage(other, b"fine", b"k")], timeout_s=20)
        producer.publish([OutgoingMessage(small, b"fits", b"k")], timeout_s=20)
    finally:
        producer.close()
    assert [r.value for r in read_all(kafka_bootstrap, other, expected=1)] == [b"fine"]
    assert [r.value for r in read_all(kafka_bootstrap, small, expected=1)] == [b"fits"]


def test_a_stage_sends_the_record_whose_output_the_broker_refuses_to_the_dead_letters_and_goes_on(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """Before, the batch was read again for ever (and every other topic's publish failed with it)."""
    source, small, dlq = f"{unique_name}.in", f"{unique_name}.small", f"{unique_name}.dlq"
    limit_records(kafka_bootstrap, small, 1024, create=True)
    ensure_topics(kafka_bootstrap, [source, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(source, str(i).encode(), b"k") for i in range(5)])
    done, stop = threading.Event(), threading.Event()

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if message.value == b"4":
            done.set()
        body = b"x" * 4096 if message.value == b"2" else message.value
        return [OutgoingMessage(small, body, message.key)]

    consumer = stage_consumer(kafka_bootstrap, producer, [source], f"{unique_name}-g", dlq, retry_backoff_s=0.1)
    thread = run_in_thread(consumer, handler, stop)
    try:
        assert done.wait(60)
        letters = read_all(kafka_bootstrap, dlq, expected=1)
        assert [r.value for r in letters] == [b"2"]
        headers = dict(letters[0].headers)
        assert (headers["imx-error-type"], headers["imx-source-offset"]) == (b"RecordRefused", b"2")
        assert sorted({r.value for r in read_all(kafka_bootstrap, small, expected=4)}) == [b"0", b"1", b"3", b"4"]
        wait_for(
            lambda: committed_and_end_offsets(kafka_bootstrap, source, f"{unique_name}-g")[0] == {0: 5},
            30,
            "the stage committed past every record",
        )
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
        producer.close()
    assert not thread.errors  # type: ignore[attr-defined]

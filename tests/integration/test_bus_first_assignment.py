"""A stage's consumer joins its group knowing its topics' partitions, so its first assignment is the
whole subscription, not an empty one that a second rebalance has to mend
(services/common/topic_metadata.py)."""

from __future__ import annotations

import logging

import pytest

from services.common.bus import BusProducer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from tests.integration.bus_helpers import stage_consumer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _nothing(_message: IncomingMessage) -> list[OutgoingMessage]:
    return []


@pytest.mark.parametrize("attempt", range(3))
def test_the_first_assignment_covers_every_subscribed_partition(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture, attempt: int
) -> None:
    lanes = [f"{unique_name}.{attempt}.{lane}" for lane in ("routine", "urgent", "bulk")]
    dlq = f"{unique_name}.{attempt}.dlq"
    ensure_topics(kafka_bootstrap, [*lanes, dlq], partitions=3)
    producer = BusProducer(kafka_bootstrap)
    caplog.set_level(logging.WARNING, logger="kafka.coordinator.assignors")
    consumer = stage_consumer(kafka_bootstrap, producer, lanes, f"{unique_name}.{attempt}.group", dlq)
    try:
        wait_for(lambda: consumer.poll_once(_nothing) >= 0 and consumer._consumer.assignment(), 30, "an assignment")
        assert {(tp.topic, tp.partition) for tp in consumer._consumer.assignment()} == {
            (topic, partition) for topic in lanes for partition in range(3)
        }
        # Only this group's topics: consumers of other tests may still be running in this process.
        unassigned = [r.getMessage() for r in caplog.records if "No partition metadata" in r.getMessage()]
        assert not [message for message in unassigned if unique_name in message]
    finally:
        consumer.close()
        producer.close()

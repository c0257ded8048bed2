"""A stage subscribed by pattern reads a partner topic created after it joined, even when the rebalance
that brings the topic finishes between two of its polls (services/common/kafka_rejoin.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.messages import OutgoingMessage
from tests.integration.bus_helpers import TopicsRead, poll_until_joined, poll_until_read, stage_consumer

pytestmark = pytest.mark.integration

JOIN_DELAY_S = 1.5  # longer than a poll: each join finishes in the background
BATCH_S = 2.0  # the time a stage spends on its batch between two polls, longer than the join


def _slow_joins(consumer: StageConsumer) -> None:
    """Make every JoinGroup of this consumer start JOIN_DELAY_S late, as a busy coordinator or a poll
    spent refreshing the metadata of thousands of topics would. Reaches into kafka-python 3.0's
    coordinator: the only way to time a rebalance against the polls."""
    coordinator: Any = consumer._consumer._coordinator
    join_and_sync = coordinator._do_join_and_sync_async

    async def late_join_and_sync() -> Any:
        await coordinator._manager._net.sleep(JOIN_DELAY_S)
        return await join_and_sync()

    coordinator._do_join_and_sync_async = late_join_and_sync


def test_a_partner_topic_created_after_the_join_is_read_when_its_rebalance_ends_between_polls(
    kafka_bootstrap: str, unique_name: str
) -> None:
    first, late, dlq = f"{unique_name}.receipts.a", f"{unique_name}.receipts.late", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [first, dlq], 1)
    producer = BusProducer(kafka_bootstrap)
    handler = TopicsRead()
    pattern = f"^{re.escape(unique_name)}\\.receipts\\..*$"
    consumer = stage_consumer(
        kafka_bootstrap, producer, (), f"{unique_name}.group", dlq, stage="audit", pattern=pattern, poll_timeout_ms=300
    )
    try:
        poll_until_joined(consumer, handler)
        _slow_joins(consumer)
        ensure_topics(kafka_bootstrap, [late], 1)
        producer.publish([OutgoingMessage(topic=late, key=b"study", value=b"receipt")])

        # Seen at the next metadata refresh (5 s), then one slow rebalance: well within 30 s when the
        # rebalance's result is applied; never when it is dropped.
        poll_until_read(consumer, handler, late, 30, between_polls_s=BATCH_S)
    finally:
        consumer.close()
        producer.close()

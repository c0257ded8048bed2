"""A stage subscribed by pattern reads a partner topic created after it joined, even when the rebalance
that brings the topic finishes between two of its polls (services/common/kafka_rejoin.py)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.stats import StageStats

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
    read: list[str] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        read.append(message.topic)
        return []

    consumer = StageConsumer(
        bootstrap=kafka_bootstrap,
        group_id=f"{unique_name}.group",
        pattern=f"^{re.escape(unique_name)}\\.receipts\\..*$",
        producer=producer,
        dead_letter_topic=dlq,
        stage="audit",
        stats=StageStats("audit"),
        poll_timeout_ms=300,
    )
    try:
        deadline = time.monotonic() + 30
        while not consumer._consumer.assignment():
            assert time.monotonic() < deadline, "the consumer never joined its group"
            consumer.poll_once(handler)

        _slow_joins(consumer)
        ensure_topics(kafka_bootstrap, [late], 1)
        producer.publish([OutgoingMessage(topic=late, key=b"study", value=b"receipt")])

        # Seen at the next metadata refresh (5 s), then one slow rebalance: well within 30 s when the
        # rebalance's result is applied; never when it is dropped.
        deadline = time.monotonic() + 30
        while late not in read:
            assigned = sorted(tp.topic for tp in consumer._consumer.assignment())
            assert time.monotonic() < deadline, f"the late partner's topic was never read; assigned: {assigned}"
            consumer.poll_once(handler)
            time.sleep(BATCH_S)
    finally:
        consumer.close()
        producer.close()

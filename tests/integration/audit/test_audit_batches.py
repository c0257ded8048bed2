"""The audit stage's batches on real Kafka: events that arrive within a second are handled (and written)
as one batch, so the per-batch database round trips are paid once per second, not per 100 ms."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from services.audit.consumer import audit_stage_spec
from services.common.bus import BusProducer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.topics import Topics
from tests.integration.audit.helpers import audit_consumer
from tests.unit.audit.builders import T0_MS, Instance, journey


class _Batches:
    """A handler that keeps the size of each flushed batch."""

    def __init__(self) -> None:
        self.pending = 0
        self.sizes: list[int] = []

    def __call__(self, message: IncomingMessage) -> Sequence[OutgoingMessage]:
        self.pending += 1
        return []

    def flush(self) -> None:
        if self.pending:
            self.sizes.append(self.pending)
        self.pending = 0


def test_events_arriving_within_a_second_are_one_or_two_batches(kafka_bootstrap: str, unique_name: str) -> None:
    topics = Topics(prefix=unique_name + ".")
    ensure_topics(kafka_bootstrap, [*topics.pipeline(), topics.receipts("research-a")], 1)
    spec = audit_stage_spec(topics)
    producer = BusProducer(kafka_bootstrap)
    consumer = audit_consumer(
        kafka_bootstrap,
        topics,
        producer,
        poll_timeout_ms=100,
        fetch_max_wait_ms=spec.fetch_max_wait_ms,
        fetch_min_bytes=spec.fetch_min_bytes,
    )
    handler = _Batches()
    try:
        deadline = time.monotonic() + 30
        while not consumer._consumer.assignment():  # joined, partitions assigned
            assert time.monotonic() < deadline, "the consumer never got its partitions"
            consumer.poll_once(handler)
        journeys = [journey(topics, Instance(sop=f"1.2.826.0.1.3680043.10.7.{n}"), t0_ms=T0_MS) for n in range(5)]
        sent = sum(len(messages) for messages in journeys)

        def publish() -> None:  # five instances' hops, 100 ms apart, while the consumer polls
            for messages in journeys:
                producer.publish(messages)
                time.sleep(0.1)

        publisher = threading.Thread(target=publish)
        publisher.start()
        deadline = time.monotonic() + 30
        while sum(handler.sizes) < sent:
            assert time.monotonic() < deadline, f"{sent - sum(handler.sizes)} events did not arrive: {handler.sizes}"
            consumer.poll_once(handler)
        publisher.join()
        # With the pipeline stages' 100 ms fetch wait these arrive as about five batches.
        assert len(handler.sizes) <= 2, handler.sizes
    finally:
        consumer.close()
        producer.close()

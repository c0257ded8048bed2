"""A stage stopped while its broker is away: kafka-python's close waits for ever for what is queued, and
the stage hung until killed. Closed within its timeout now; what was not acknowledged is read again."""

from __future__ import annotations

import time

import pytest

from services.common.bus import BrokerUnavailable, BusProducer
from services.common.messages import OutgoingMessage

TOPIC = "imx.routed.v1"


def test_closing_a_producer_with_records_the_broker_never_took_returns_within_its_timeout() -> None:
    producer = BusProducer("127.0.0.1:1", client_config={"api_version": (2, 8)})  # nothing listens there
    metadata = producer._producer._metadata
    # As after a broker went away: the topic's partitions are known from before.
    metadata.partitions_for_topic = lambda topic: {0}
    metadata.available_partitions_for_topic = lambda topic: {0}
    known = metadata.topics
    metadata.topics = lambda *args, **kwargs: set(known(*args, **kwargs)) | {TOPIC}
    with pytest.raises(BrokerUnavailable):
        producer.publish([OutgoingMessage(TOPIC, b"event", b"key")], timeout_s=0.5)
    started = time.monotonic()
    producer.close(timeout_s=0.5)
    assert time.monotonic() - started < 5

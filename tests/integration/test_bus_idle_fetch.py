"""An idle stage asks the broker for records a few times a second, not ten, and is answered at the
first record; a busy one gathers records for its usual wait (StageConsumer's fetch modes)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from services.common.bus import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, BusProducer, StageConsumer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from tests.integration.bus_helpers import stage_consumer

pytestmark = pytest.mark.integration


def _count_fetches(consumer: StageConsumer) -> list[tuple[int, int]]:
    """(min bytes, max wait) of every fetch request the consumer builds from now on."""
    fetcher: Any = consumer._consumer._fetcher
    built: list[tuple[int, int]] = []
    create = fetcher._create_fetch_requests

    def counting() -> Any:
        requests = create()
        built.extend((fetcher.config["fetch_min_bytes"], fetcher.config["fetch_max_wait_ms"]) for _ in requests)
        return requests

    fetcher._create_fetch_requests = counting
    return built


def test_an_idle_stage_fetches_rarely_and_a_record_wakes_it(kafka_bootstrap: str, unique_name: str) -> None:
    topic, dlq = f"{unique_name}.in", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    consumer = stage_consumer(kafka_bootstrap, producer, [topic], f"{unique_name}-g", dlq)
    received: list[IncomingMessage] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        received.append(message)
        return []

    try:
        deadline = time.monotonic() + 30
        while not consumer._consumer.assignment() and time.monotonic() < deadline:
            consumer.poll_once(handler)
        built = _count_fetches(consumer)
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            consumer.poll_once(handler)
        idle_seconds = time.monotonic() - started
        # At the busy wait (100 ms) it would be ~30; idle, the broker holds each fetch up to 500 ms.
        assert len(built) <= 3 * idle_seconds + 2, built
        assert built and set(built[1:]) == {(1, 500)}

        built.clear()
        producer.publish([OutgoingMessage(topic, b"wake", b"k")])
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            consumer.poll_once(handler)
        assert [m.value for m in received] == [b"wake"]
        # Records keep coming: the fetches gather company again. (A lone record does not switch: the poll
        # after it finds nothing and the stage is idle again before its next fetch is built.)
        built.clear()
        deadline = time.monotonic() + 10
        while (FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS) not in built and time.monotonic() < deadline:
            producer.publish([OutgoingMessage(topic, b"more", b"k")])
            consumer.poll_once(handler)
        assert (FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS) in built, built
    finally:
        consumer.close()
        producer.close()

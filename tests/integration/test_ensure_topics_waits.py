"""A stage that starts before its broker: ensure_topics waits (capped backoff) instead of ending the
process, creates the topics once the broker answers, and gives up waiting when told to stop."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kafka import KafkaConsumer

from services.common.bus import ensure_topics
from tests.integration.bus_helpers import LateBroker
from tools.devstack import free_port

pytestmark = pytest.mark.integration


def test_ensure_topics_waits_for_a_broker_that_is_not_up_yet(kafka_bootstrap: str, unique_name: str) -> None:
    broker = LateBroker(free_port(), kafka_bootstrap)
    topic = f"{unique_name}.late"
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            ensure_topics(f"127.0.0.1:{broker.port}", [topic], partitions=2, max_backoff_s=1.0, attempt_timeout_ms=1000)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    try:
        time.sleep(4)
        assert thread.is_alive() and not outcome, "still waiting for the broker, not exited"
        broker.open()
        thread.join(30)
    finally:
        broker.close()
    assert outcome == [None]
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1}
    finally:
        consumer.close()


def test_ensure_topics_stops_waiting_when_the_stage_is_stopped() -> None:
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            address = f"127.0.0.1:{free_port()}"
            ensure_topics(address, ["never"], 1, stop=stop, max_backoff_s=1.0, attempt_timeout_ms=500)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    time.sleep(2)
    assert thread.is_alive() and not outcome
    stop.set()
    thread.join(5)
    assert outcome == [None], "a stop ends the wait without an error"


def test_a_starting_service_tries_a_broker_that_is_down_at_least_every_two_seconds() -> None:
    """With the defaults: waits of 1, 2, 2, 2 s between tries, not 1, 2, 4, 8... up to 30 s, which left a
    service starting beside a broker that had been back for up to half a minute."""
    stop = threading.Event()
    waits: list[float] = []

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "broker unreachable; waiting to create topics":
                waits.append(record.seconds)  # type: ignore[attr-defined]
                if len(waits) == 4:
                    stop.set()

    handler = Waits()
    logging.getLogger("services.common.bus").addHandler(handler)
    try:
        thread = threading.Thread(
            target=ensure_topics,
            args=(f"127.0.0.1:{free_port()}", ["never"], 1),
            kwargs={"stop": stop, "attempt_timeout_ms": 300},
            daemon=True,
        )
        thread.start()
        thread.join(30)
    finally:
        logging.getLogger("services.common.bus").removeHandler(handler)
    assert not thread.is_alive(), "still waiting"
    assert waits == [1.0, 2.0, 2.0, 2.0]

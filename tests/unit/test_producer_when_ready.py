"""A producer made once the broker answers: the service's other work goes on meanwhile, a publish before
then is the broker's absence (BrokerUnavailable), and one made as the service stops is closed."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.common.bus import BrokerUnavailable
from services.common.producer_when_ready import ProducerWhenReady


class Made:
    def __init__(self) -> None:
        self.published: list[Any] = []
        self.closed = False

    def publish(self, messages: Any, timeout_s: float = 60.0) -> None:
        self.published.extend(messages)

    def close(self) -> None:
        self.closed = True


def test_the_producer_is_tried_again_until_the_broker_answers_and_then_publishes() -> None:
    made, tries = Made(), []

    def make() -> Any:
        tries.append(1)
        if len(tries) < 3:
            raise TimeoutError("Unable to bootstrap")
        return made

    producer = ProducerWhenReady(make, retry_s=0.01)
    try:
        assert producer.wait_ready(5), "never made"
        producer.publish(["m"])
        assert made.published == ["m"] and len(tries) == 3
    finally:
        producer.close()
    assert made.closed


def test_before_the_broker_answers_a_publish_is_broker_unavailable_and_nothing_waits() -> None:
    gate = threading.Event()

    def make() -> Any:
        gate.wait(5)
        raise TimeoutError("Unable to bootstrap")

    producer = ProducerWhenReady(make, retry_s=0.01)
    try:
        assert not producer.ready
        with pytest.raises(BrokerUnavailable):
            producer.publish(["m"], timeout_s=0.1)  # waited for, as during an outage, then given up
        with pytest.raises(BrokerUnavailable):
            producer.publish_soon(["m"], lambda _e: None)
    finally:
        producer.close()
        gate.set()


def test_a_producer_made_while_the_service_stops_is_closed_not_kept() -> None:
    made, making, release = Made(), threading.Event(), threading.Event()

    def make() -> Any:
        making.set()
        release.wait(5)
        return made

    producer = ProducerWhenReady(make, retry_s=0.01)
    assert making.wait(5)
    producer.close()  # while the broker is being reached
    release.set()
    producer.wait_ready(5)
    assert made.closed and not producer.ready


def test_a_publish_waiting_for_the_broker_goes_out_once_the_producer_is_made() -> None:
    made, gate = Made(), threading.Event()

    def make() -> Any:
        gate.wait(5)
        return made

    producer = ProducerWhenReady(make, retry_s=0.01)
    threading.Timer(0.2, gate.set).start()
    try:
        producer.publish(["m"], timeout_s=5)
        assert made.published == ["m"]
    finally:
        producer.close()

"""The retrieval API's events: recorded without waiting on the event loop, every one handed to the
producer by the API's own thread, also those recorded just before it stops."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.delivery.dicomweb_wiring import RetrievalEvents
from services.proto_gen.imx.v1.events_pb2 import PartnerRetrieval


class Producer:
    def __init__(self, fail_first: bool = False, ready: bool = True) -> None:
        self.sent: list[OutgoingMessage] = []
        self._fail = fail_first
        self.ready = ready

    def publish_soon(self, messages: Sequence[OutgoingMessage], on_error: Callable[[BaseException], None]) -> None:
        if self._fail:
            self._fail = False
            raise RuntimeError("closed")
        self.sent.extend(messages)


def retrieval(n: int) -> PartnerRetrieval:
    return PartnerRetrieval(partner_id="p1", study_instance_uid=f"1.2.{n}")


def test_every_event_recorded_reaches_the_producer_on_the_access_topic_by_close() -> None:
    producer, topics = Producer(), Topics("t-")
    events = RetrievalEvents(producer, topics, interval_s=60)  # nothing handed over before close
    for n in range(5):
        events.record(retrieval(n))
    assert producer.sent == []
    events.close()
    assert [m.topic for m in producer.sent] == [topics.access] * 5
    assert [m.key for m in producer.sent] == [f"1.2.{n}".encode() for n in range(5)]


def test_events_leave_while_the_api_runs_and_a_failed_hand_over_loses_only_its_event() -> None:
    producer: Any = Producer(fail_first=True)
    events = RetrievalEvents(producer, Topics(""), interval_s=0.01)
    try:
        for n in range(3):
            events.record(retrieval(n))
        deadline = time.monotonic() + 5
        while len(producer.sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(producer.sent) == 2, "the thread carried on after the producer refused one"
    finally:
        events.close()


def test_events_wait_for_a_producer_not_made_yet_and_leave_once_it_is() -> None:
    """Delivery started while the broker was away serves partners at once: their retrievals' events wait."""
    producer: Any = Producer(ready=False)
    events = RetrievalEvents(producer, Topics(""), interval_s=0.01)
    try:
        for n in range(3):
            events.record(retrieval(n))
        time.sleep(0.1)
        assert producer.sent == []
        producer.ready = True
        deadline = time.monotonic() + 5
        while len(producer.sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [m.key for m in producer.sent] == [f"1.2.{n}".encode() for n in range(3)]
    finally:
        events.close()


def test_events_held_past_the_bound_drop_the_oldest() -> None:
    producer: Any = Producer(ready=False)
    events = RetrievalEvents(producer, Topics(""), interval_s=60, max_held=2)
    for n in range(5):
        events.record(retrieval(n))
    events._hand_over()  # what the thread does every interval
    producer.ready = True
    events.close()
    assert [m.key for m in producer.sent] == [b"1.2.3", b"1.2.4"]

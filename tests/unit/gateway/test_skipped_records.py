"""A record the gateway can never handle (undecodable, or a delivery id that would name a path) is
skipped and committed: nothing is fetched, stored or recorded for it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka.structs import TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.gateway.worker import Gateway, GatewayOptions
from services.proto_gen.imx.v1 import events_pb2

from .fake_consumer import FEED, ROUTINE, FakeFeed, NoReceipts, Record


class Untouchable:
    """Stands for the fetcher, store, records and dead letters: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a skipped record reached {name}")


class OneRecordFeed(FakeFeed):
    def __init__(self, record: Record, stop: threading.Event) -> None:
        super().__init__(1, stop)
        self._record = record

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        polled = super().poll(timeout_ms, max_records)
        return {ROUTINE: [self._record]} if polled else polled


def _delivery(event_id: str) -> bytes:
    delivery = events_pb2.PartnerDelivery()
    delivery.meta.event_id = event_id
    delivery.partner_id = "p"
    return delivery.SerializeToString()


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (b"PartnerDelivery", _delivery("../../etc/passwd")),
        (b"PartnerDelivery", b"\xff\xff not protobuf"),
        (b"StudyComplete", b"\xff\xff not protobuf"),
    ],
    ids=["path-in-delivery-id", "undecodable-delivery", "undecodable-study"],
)
def test_a_record_that_can_never_be_handled_is_skipped_and_committed(kind: bytes, value: bytes) -> None:
    stop = threading.Event()
    feed = OneRecordFeed(Record(0, [(EVENT_TYPE_HEADER, kind)], value), stop)
    options = GatewayOptions(receipts_topic="r", window=50, commit_interval_s=3600.0, fetch_ahead=0)
    nothing = Untouchable()
    gateway = Gateway(feed, NoReceipts(), nothing, nothing, nothing, nothing, options)  # type: ignore[arg-type]
    gateway.subscribe(FEED)
    gateway.run(stop)
    assert feed.commits == [1]

"""When the gateway loop commits: a window's worth or a quiet feed, not every poll, and never more
than the window read but not committed (what a crash would read again)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kafka.errors import FencedInstanceIdError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.common.static_membership import ReplicaNameTaken
from services.gateway.fetched import Fetched
from services.gateway.policy import RetryPolicy
from services.gateway.records import DeadLetters, StoredRecords
from services.gateway.scratch_files import new_scratch_file
from services.gateway.targets import StoreResult
from services.gateway.worker import Gateway, GatewayOptions, GatewayStopped
from services.proto_gen.imx.v1 import events_pb2

from .fake_consumer import FEED, FakeFeed, NoReceipts, Record


class FencedFeed(FakeFeed):
    """A feed whose commits the broker refuses: another replica joined under this one's name."""

    config: ClassVar[dict[str, str]] = {"group_id": "imx-central-gateway-p", "group_instance_id": "gateways-0"}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        raise FencedInstanceIdError()


class FencedAtJoinFeed(FencedFeed):
    """A feed whose poll fails: the group refused a rejoin under this replica's name."""

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        raise FencedInstanceIdError()


def _delivery_record(offset: int, size: int = 5 * 2**20) -> Record:
    delivery = events_pb2.PartnerDelivery(meta=events_pb2.EventMeta(event_id=f"d{offset}"))
    delivery.blob.sha256, delivery.blob.size = "ab" * 32, size
    return Record(offset, [(EVENT_TYPE_HEADER, b"PartnerDelivery")], delivery.SerializeToString())


class Deliveries(FakeFeed):
    """The feed's records as PartnerDeliveries of `size` bytes (over 4 MiB: fetched into a temp file)."""

    def __init__(self, count: int, stop: threading.Event, per_poll: int = 1, size: int = 5 * 2**20) -> None:
        super().__init__(count, stop, per_poll=per_poll)
        self._size = size

    def poll(self, timeout_ms: int, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        polled = super().poll(timeout_ms, max_records)
        return {tp: [_delivery_record(r.offset, self._size) for r in records] for tp, records in polled.items()}


class _Acknowledgement:
    def __init__(self, error: Exception | None) -> None:
        self._error = error

    def get(self, timeout: float | None = None) -> None:
        if self._error is not None:
            raise self._error


class Receipts:
    """A receipts producer whose acknowledgements fail with `error` (None: they come)."""

    def __init__(self, error: Exception | None = None) -> None:
        self._error = error

    def send(self, *args: object, **kwargs: object) -> Any:
        return _Acknowledgement(self._error)

    def flush(self, timeout: float | None = None) -> None:
        pass


def run(count: int, window: int, feed_type: type[FakeFeed] = FakeFeed) -> FakeFeed:
    """A feed that a gateway keeps up with: each poll returns one record (as when they arrive one by one)."""
    stop = threading.Event()
    feed = feed_type(count, stop)
    options = GatewayOptions(receipts_topic="r", window=window, commit_interval_s=3600.0, fetch_ahead=0)
    gateway = Gateway(feed, NoReceipts(), None, None, None, None, options)  # type: ignore[arg-type]
    gateway.subscribe(FEED)
    gateway.run(stop)
    return feed


def test_a_feed_read_one_record_at_a_time_is_committed_per_window_not_per_poll() -> None:
    feed = run(120, window=50)
    assert feed.commits == [50, 100, 120], "full windows, then the rest when the feed went quiet"
    assert feed.most_uncommitted <= 50


def test_nothing_settled_waits_past_a_quiet_poll() -> None:
    feed = run(3, window=50)
    assert feed.commits == [3]


def test_a_gateway_fenced_by_a_replica_of_the_same_name_stops_saying_why() -> None:
    # Without this, the refused commit ended the worker as any Kafka error does, naming only its type.
    with pytest.raises(ReplicaNameTaken, match="imx-central-gateway-p as 'gateways-0'"):
        run(3, window=50, feed_type=FencedFeed)


def test_a_gateway_refused_a_rejoin_under_its_name_stops_saying_why() -> None:
    with pytest.raises(ReplicaNameTaken, match="imx-central-gateway-p as 'gateways-0'"):
        run(3, window=50, feed_type=FencedAtJoinFeed)


def test_a_gateway_stopped_by_receipts_it_cannot_write_leaves_no_fetched_ahead_files(tmp_path: Path) -> None:
    """The last commit raised again in the loop's `finally`, before the fetches ahead were closed: their
    temp files (up to 1 GiB each) stayed, and a central gateway's worker restarts in the same process,
    whose own files the clean-up at start leaves alone."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()

    class FileFetcher:  # an object over 4 MiB: fetched into a temp file
        def fetch(self, delivery: events_pb2.PartnerDelivery) -> Fetched:
            fd, path = new_scratch_file(incoming)
            os.write(fd, b"x" * 100)
            os.close(fd)
            return Fetched.in_file(path)

    class Stores:
        kind = "file"

        def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
            return StoreResult.stored("written")

    stop = threading.Event()
    options = GatewayOptions(receipts_topic="r", commit_interval_s=0.0, fetch_ahead=2)
    gateway = Gateway(
        Deliveries(10, stop, per_poll=10),  # type: ignore[arg-type]
        Receipts(KafkaError("broker gone")),  # type: ignore[arg-type]
        FileFetcher(),  # type: ignore[arg-type]
        Stores(),  # type: ignore[arg-type]
        StoredRecords(tmp_path / "stored.sqlite3"),
        DeadLetters(tmp_path / "dead-letters"),
        options,
    )
    gateway.subscribe(FEED)
    with pytest.raises(GatewayStopped):
        gateway.run(stop)
    deadline = time.monotonic() + 5
    while list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)  # a fetch under way when it closed deletes its own file when it ends
    assert list(incoming.iterdir()) == []


def test_a_full_state_disk_after_the_pacs_stored_is_waited_for_not_a_crash_and_a_second_send(tmp_path: Path) -> None:
    """The record's write raised sqlite3.OperationalError (a full disk), which nothing caught: the gateway
    died with a traceback after the PACS had stored the instance, and sent it again at its next start."""
    sent: list[str] = []

    class Pacs:
        kind = "dicom"

        def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
            sent.append(delivery.meta.event_id)
            return StoreResult.stored("0x0000")

    class InMemory:
        def fetch(self, delivery: events_pb2.PartnerDelivery) -> Fetched:
            return Fetched(data=b"x")

    class FullForAWhile(StoredRecords):
        refusals = 2

        def add(self, *args: Any, **kwargs: Any) -> None:
            if self.refusals:
                self.refusals -= 1
                raise sqlite3.OperationalError("database or disk is full")
            super().add(*args, **kwargs)

    stop = threading.Event()
    records = FullForAWhile(tmp_path / "stored.sqlite3")
    policy = RetryPolicy(initial_s=0.01, jitter_s=0.0, unreachable_cap_s=0.01)
    options = GatewayOptions(receipts_topic="r", commit_interval_s=0.0, fetch_ahead=0, policy=policy)
    gateway = Gateway(
        Deliveries(1, stop, size=1),  # type: ignore[arg-type]
        Receipts(),  # type: ignore[arg-type]
        InMemory(),  # type: ignore[arg-type]
        Pacs(),  # type: ignore[arg-type]
        records,
        DeadLetters(tmp_path / "dead-letters"),
        options,
    )
    gateway.subscribe(FEED)
    counters = gateway.run(stop)
    assert sent == ["d0"], "stored at the PACS once"
    assert records.stored("d0") is not None and counters.stored == 1

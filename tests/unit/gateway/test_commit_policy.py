"""When the gateway loop commits: a window's worth or a quiet feed, not every poll, and never more
than the window read but not committed (what a crash would read again)."""

from __future__ import annotations

import threading
from typing import ClassVar

import pytest
from kafka.errors import FencedInstanceIdError
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.static_membership import ReplicaNameTaken
from services.gateway.worker import Gateway, GatewayOptions

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

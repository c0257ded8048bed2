"""When the gateway loop commits: a window's worth or a quiet feed, not every poll, and never more
than the window read but not committed (what a crash would read again)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.gateway.worker import Gateway, GatewayOptions

FEED = "imx.partner.p.v1"
TP = TopicPartition(FEED, 0)


@dataclass
class Record:
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [(EVENT_TYPE_HEADER, b"Unknown")])
    value: bytes = b""


class OneByOneFeed:
    """A feed that a gateway keeps up with: each poll returns one record (as when they arrive one by one)."""

    def __init__(self, count: int, stop: threading.Event, window: int) -> None:
        self._count, self._stop, self._window = count, stop, window
        self.position = 0
        self.committed = 0
        self.commits: list[int] = []
        self.most_uncommitted = 0

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *partitions: TopicPartition) -> None:
        pass

    def resume(self, *partitions: TopicPartition) -> None:
        pass

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int:
        return self._count

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self.position >= self._count:
            if self.committed >= self._count:
                self._stop.set()
            return {}
        record = Record(self.position)
        self.position += 1
        self.most_uncommitted = max(self.most_uncommitted, self.position - self.committed)
        return {TP: [record]}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed = offsets[TP].offset
        self.commits.append(self.committed)


class NoReceipts:
    def flush(self, timeout: float | None = None) -> None:
        raise AssertionError("nothing here sends a receipt")


def run(count: int, window: int) -> OneByOneFeed:
    stop = threading.Event()
    feed = OneByOneFeed(count, stop, window)
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

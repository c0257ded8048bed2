"""A fake Kafka consumer for the gateway loop's unit tests: a routine feed of `count` records with
an "Unknown" event type (settled without effects), optionally with an empty urgent lane assigned."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.common.topics import Topics

FEED = "imx.partner.p.v1"
ROUTINE = TopicPartition(FEED, 0)
URGENT = TopicPartition(Topics.lanes_of(FEED)[0], 0)


@dataclass
class Record:
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [(EVENT_TYPE_HEADER, b"Unknown")])
    value: bytes = b""


class NoReceipts:
    def flush(self, timeout: float | None = None) -> None:
        raise AssertionError("nothing here sends a receipt")


class _Subscription:
    """The part of kafka-python's SubscriptionState that services/common/positions.py reads."""

    def __init__(self, feed: FakeFeed) -> None:
        self._feed = feed

    def position(self, tp: TopicPartition) -> OffsetAndMetadata:
        if tp not in self._feed.assignment():
            raise KeyError(tp)
        return OffsetAndMetadata(self._feed.position(tp), "", -1)


class FakeFeed:
    """Routine records only, `per_poll` at a time (at most what the gateway asks for); with `laned`
    the urgent lane is assigned too, and empty. Sets `stop` once everything is read and committed.
    Keeps the commits, the most records read but not committed (what a crash would read again) and
    the count of end-offset requests."""

    def __init__(
        self, count: int, stop: threading.Event, per_poll: int = 1, laned: bool = False, trickle: bool = False
    ) -> None:
        self._count, self._stop, self._per_poll, self._trickle = count, stop, per_poll, trickle
        self._assigned = {ROUTINE, URGENT} if laned else {ROUTINE}
        self.next = 0
        self.committed = 0
        self.commits: list[int] = []
        self.most_uncommitted = 0
        self.asked = 0
        # Where kafka-python keeps positions, which the gateway's lane gate reads (ConsumerPositions).
        self._subscription = _Subscription(self)

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        pass

    def resume(self, *partitions: TopicPartition) -> None:
        pass

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int:
        """A trickling feed's records arrive as they are polled: its end is what was read so far."""
        if tp != ROUTINE:
            return 0
        return self.next if self._trickle else self._count

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self.next if tp == ROUTINE else 0

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int | None = None) -> dict[TopicPartition, int]:
        self.asked += 1
        return dict.fromkeys(partitions, 0)

    def poll(self, timeout_ms: int, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        if self.next >= self._count:
            if self.committed >= self._count:
                self._stop.set()
            return {}
        records = [
            Record(offset)
            for offset in range(self.next, min(self._count, self.next + self._per_poll, self.next + max_records))
        ]
        self.next += len(records)
        self.most_uncommitted = max(self.most_uncommitted, self.next - self.committed)
        return {ROUTINE: records}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed = offsets[ROUTINE].offset
        self.commits.append(self.committed)

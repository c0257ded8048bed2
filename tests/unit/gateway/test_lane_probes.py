"""When the gateway asks the broker for the more urgent lanes' end offsets (ListOffsets): only while
it works through full windows (a backlog), never while it keeps up with its feed."""

from __future__ import annotations

import threading
from typing import Any

from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.topics import Topics
from services.gateway.worker import Gateway, GatewayOptions

from .test_commit_policy import FEED, NoReceipts, Record

ROUTINE = TopicPartition(FEED, 0)
URGENT = TopicPartition(Topics.lanes_of(FEED)[0], 0)


class LanedFeed:
    """Routine records only, `per_poll` at a time (at most what the gateway asks for); the urgent lane
    assigned and empty. Counts the end-offset requests."""

    def __init__(self, count: int, per_poll: int, stop: threading.Event, trickle: bool) -> None:
        self._count, self._per_poll, self._stop, self._trickle = count, per_poll, stop, trickle
        self.next = 0
        self.committed = 0
        self.asked = 0

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {ROUTINE, URGENT}

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

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self.next >= self._count:
            if self.committed >= self._count:
                self._stop.set()
            return {}
        records = [
            Record(offset)
            for offset in range(self.next, min(self._count, self.next + self._per_poll, self.next + max_records))
        ]
        self.next += len(records)
        return {ROUTINE: records}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed = offsets[ROUTINE].offset


def asked(count: int, per_poll: int, window: int, trickle: bool = False, commit_interval_s: float = 0.0) -> int:
    stop = threading.Event()
    feed = LanedFeed(count, per_poll, stop, trickle)
    options = GatewayOptions(receipts_topic="r", window=window, commit_interval_s=commit_interval_s, fetch_ahead=0)
    gateway = Gateway(feed, NoReceipts(), None, None, None, None, options)  # type: ignore[arg-type]
    gateway.subscribe(FEED)
    gateway.run(stop)
    assert feed.committed == count
    return feed.asked


def test_a_gateway_keeping_up_with_its_feed_asks_nothing() -> None:
    assert asked(count=40, per_poll=3, window=10) == 0
    assert asked(count=40, per_poll=3, window=10, trickle=True, commit_interval_s=3600.0) == 0, (
        "nor when settled records not yet committed leave its polls little room"
    )


def test_a_gateway_working_through_full_windows_asks() -> None:
    assert asked(count=40, per_poll=100, window=10) >= 1

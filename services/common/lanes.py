"""Priority lanes: urgent work overtakes a backlog of routine and bulk work in every stage.

After routing, every topic exists once per lane (services/common/topics.py). A producer picks the lane
from the event's priority class; a consumer subscribes to all lanes of its input and, before each
poll, pauses the partitions of every lane below the most urgent lane that has a backlog (strict
priority: urgent holds routine and bulk back, routine holds bulk back). Pausing keeps the partitions
assigned and their fetched data parked in the client (KIP-266/KAFKA-7548), so resuming costs nothing,
and nothing about offsets changes: what is held back is simply not read yet.

A lane's backlog is its partitions' end offset minus the consumer's position. The end offset comes
from fetch responses (`highwater`, no request), but kafka-python parses a fetch response only when
`poll` drains it and sends no new fetch while earlier responses wait to be drained; a consumer busy
with a bulk backlog would then see urgent arrivals late. So while lower lanes are being read from a
backlog (the caller says `busy`: its last poll returned a full batch), the end offsets of the higher
lanes are also asked for (one ListOffsets request, at most every `probe_interval_s`). A consumer that
keeps up (its polls drain what was fetched) or is idle fetches every partition anyway and asks nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from services.common.topics import LANES, ROUTINE
from services.proto_gen.imx.v1 import events_pb2

log = logging.getLogger(__name__)

RANK = {lane: rank for rank, lane in enumerate(LANES)}  # 0 is the most urgent

_LANE_OF_PRIORITY = {
    events_pb2.PRIORITY_CLASS_URGENT: "urgent",
    events_pb2.PRIORITY_CLASS_ROUTINE: ROUTINE,
    events_pb2.PRIORITY_CLASS_BULK: "bulk",
}
_PRIORITY_OF_LANE = {lane: priority for priority, lane in _LANE_OF_PRIORITY.items()}


def lane_for(priority: int) -> str:
    """The lane of an event's priority class; unset (an event from before classes) is routine."""
    return _LANE_OF_PRIORITY.get(priority, ROUTINE)  # type: ignore[call-overload]


def least_urgent(priorities: Iterable[int]) -> int:
    """The least urgent class among `priorities` (routine when there are none): a study's announcement
    goes on the lane its slowest instances took, so it is read after them."""
    lanes = [lane_for(p) for p in priorities] or [ROUTINE]
    return _PRIORITY_OF_LANE[max(lanes, key=RANK.__getitem__)]


def held_back(lanes: Mapping[TopicPartition, str], backlog: Mapping[TopicPartition, int]) -> set[TopicPartition]:
    """Which partitions not to read next (pure): those of every lane below the most urgent lane with a
    backlog. `lanes` names the lane of each assigned laned partition (others are never held back);
    `backlog` the records waiting on a partition, where known."""
    busy = [RANK[lanes[tp]] for tp, waiting in backlog.items() if waiting > 0 and tp in lanes]
    if not busy:
        return set()
    top = min(busy)
    return {tp for tp, lane in lanes.items() if RANK[lane] > top}


class LaneConsumer(Protocol):
    """What the gate needs of a KafkaConsumer."""

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None: ...

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int]: ...


class LaneGate:
    """Applies `held_back` to a consumer before each poll, together with an operator's pause."""

    def __init__(
        self,
        consumer: LaneConsumer,
        lane_of: Callable[[str], str | None],
        probe_interval_s: float = 0.2,
        probe_timeout_ms: int = 1000,
    ) -> None:
        self._consumer = consumer
        self._lane_of = lane_of
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_ms = probe_timeout_ms
        self._next_probe_at = 0.0
        self._probed: dict[TopicPartition, int] = {}  # end offsets last asked for; they only grow
        self.held: set[TopicPartition] = set()

    def lanes(self) -> dict[TopicPartition, str]:
        """The lane of every assigned laned partition."""
        out: dict[TopicPartition, str] = {}
        for tp in self._consumer.assignment():
            lane = self._lane_of(tp.topic)
            if lane is not None:
                out[tp] = lane
        return out

    def apply(self, paused: bool = False, busy: bool = False) -> set[TopicPartition]:
        """Pause what must not be read in the next poll and resume everything else; returns what is
        held back. `paused`: the operator paused the stage (everything is held). `busy`: the last poll
        returned a full batch, so fetched responses may wait undrained and the end offsets from them
        be stale (see the module doc).
        Recomputed from the current assignment every time: a rebalance never leaves a partition paused."""
        if paused:
            wanted = set(self._consumer.assignment())
        else:
            lanes = self.lanes()
            wanted = held_back(lanes, self.backlog(lanes, busy))
        if wanted:
            self._consumer.pause(*wanted)
        released = self._consumer.paused() - wanted
        if released:
            self._consumer.resume(*released)
        if not paused and wanted != self.held:
            log.debug("partitions of lower lanes held back (0: all released)", extra={"count": len(wanted)})
        self.held = wanted
        return wanted

    def outranked(self, lane: str, probe: bool = True) -> bool:
        """Whether a lane more urgent than `lane` has records waiting (the end offsets are asked for at
        most every probe interval, and only with `probe`): a consumer working through a window of `lane`
        should stop and poll."""
        lanes = self.lanes()
        backlog = self.backlog(lanes, busy=probe)
        return any(waiting > 0 and RANK[lanes[tp]] < RANK[lane] for tp, waiting in backlog.items())

    def backlog(self, lanes: Mapping[TopicPartition, str], busy: bool = False) -> dict[TopicPartition, int]:
        """Records waiting on each partition of a lane that could hold another back."""
        if not lanes:
            return {}
        ranks = {RANK[lane] for lane in lanes.values()}
        higher = [tp for tp, lane in lanes.items() if RANK[lane] < max(ranks)]
        if not higher:
            return {}
        reading_lower = any(RANK[lane] > min(ranks) and tp not in self.held for tp, lane in lanes.items())
        now = time.monotonic()
        if busy and reading_lower and now >= self._next_probe_at:
            self._next_probe_at = now + self._probe_interval_s
            try:
                self._probed.update(self._consumer.end_offsets(higher, timeout_ms=self._probe_timeout_ms))
            except KafkaError as error:  # the fetch responses' figures will do until the next probe
                log.debug("lane probe failed", extra={"error": type(error).__name__})
        out: dict[TopicPartition, int] = {}
        for tp in higher:
            end = max(self._consumer.highwater(tp) or 0, self._probed.get(tp) or 0)
            if end <= 0:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is not None:
                out[tp] = max(0, end - position)
        return out

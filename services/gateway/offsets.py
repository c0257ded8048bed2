"""Which offset of each partition may be committed: store-and-forward bookkeeping.

A message's offset is committable once it is settled (stored, dead-lettered, or skipped) and every
earlier message of its partition is settled too; Kafka's committed offset is "the next to read", so
a crash re-reads only the uncommitted tail, so at most the in-flight window is looked at again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.structs import TopicPartition


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    settled: set[int] = field(default_factory=set)
    committed: int | None = None  # next offset to read, as last committed


class OffsetTracker:
    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _Partition] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._partitions.setdefault(tp, _Partition()).pending.add(offset)

    def settled(self, tp: TopicPartition, offset: int) -> None:
        partition = self._partitions.setdefault(tp, _Partition())
        partition.pending.discard(offset)
        partition.settled.add(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to read per partition, for partitions where that moved since the last commit."""
        out: dict[TopicPartition, int] = {}
        for tp, partition in self._partitions.items():
            if not partition.settled:
                continue
            floor = min(partition.pending) if partition.pending else None
            ready = [o for o in partition.settled if floor is None or o < floor]
            if not ready:
                continue
            upto = max(ready) + 1
            if partition.committed is None or upto > partition.committed:
                out[tp] = upto
        return out

    def abandoned(self, tp: TopicPartition, offset: int) -> None:
        """Started but put back unhandled (the consumer seeks back to it): no longer in flight."""
        partition = self._partitions.get(tp)
        if partition is not None:
            partition.pending.discard(offset)

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, upto in offsets.items():
            partition = self._partitions.setdefault(tp, _Partition())
            partition.committed = upto
            partition.settled = {o for o in partition.settled if o >= upto}

    def in_flight(self) -> int:
        """Settled but not yet committed, plus started but not settled: what a crash would re-read."""
        return sum(len(p.pending) + len(p.settled) for p in self._partitions.values())

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken away by a rebalance: their new owner starts from the committed offset."""
        for tp in partitions:
            self._partitions.pop(tp, None)

"""Where a consumer stands on each assigned partition, read from what kafka-python already tracks.

`KafkaConsumer.position(tp)` first refreshes committed offsets and runs offset resets and KIP-320
validation over every assigned partition, per call. Asked for each partition every 2 s for the lag,
it cost 12.8% of audit's CPU (~340 partitions); the lane gate asked for each partition of the more
urgent lanes before every poll. The client's subscription state already holds each partition's
position (moved by every poll and seek) and its high watermark (from fetch responses), so reading it
needs no request. A partition without a valid position yet (just assigned, awaiting a reset) has
none here: its lag is unknown until the next poll gives it one.
"""

from __future__ import annotations

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition


class ConsumerPositions:
    """The consumer's own view, without a round trip. It also stands in for the consumer where the lane
    gate (services/common/lanes.py, `LaneConsumer`) asks for positions before each poll."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        # kafka-python keeps positions in its SubscriptionState; it has no public call that reads them
        # without the refresh described above. tests/integration/test_bus_positions.py holds this to the
        # client in use, so an upgrade that moves it fails a test rather than making lag disappear.
        self._subscription = consumer._subscription

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        """The offset of the next record the consumer will read from `partition`; None when it has no
        valid position or the partition is not assigned. `timeout_ms` is ignored: nothing is waited for."""
        try:
            offset = self._subscription.position(partition)
        except KeyError:  # revoked by a rebalance between the caller's assignment() and this call
            return None
        return None if offset is None else int(offset.offset)

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the position and the high watermark of every assigned partition for which
        both are known."""
        out: dict[tuple[str, int], int] = {}
        for tp, offset in self._subscription.all_consumed_offsets().items():
            try:
                high = self._consumer.highwater(tp)
            except KafkaError:  # revoked meanwhile (IllegalStateError)
                continue
            if high is not None:
                out[(tp.topic, tp.partition)] = max(0, high - offset.offset)
        return out

    # The rest of `LaneConsumer`, as the consumer has it.

    def assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment()

    def paused(self) -> set[TopicPartition]:
        return self._consumer.paused()

    def pause(self, *partitions: TopicPartition) -> None:
        self._consumer.pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._consumer.resume(*partitions)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._consumer.highwater(partition)

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int | None = None) -> dict[TopicPartition, int]:
        return self._consumer.end_offsets(partitions, timeout_ms=timeout_ms)

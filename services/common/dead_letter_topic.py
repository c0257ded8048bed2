"""The dead-letter topic, read without a consumer group: nothing is committed, nothing is moved. Audit's
DeadLetterAdmin lists and replays from it (services/audit/dead_letters.py); the blob lifecycle reads it
whole for the objects its letters name (dead_letter_blobs.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from services.common.bus import MAX_MESSAGE_BYTES

READ_TIMEOUT_S = 10.0  # a listing's, or one letter's: what came by then is shown
STALLED_AFTER_S = 60.0  # a whole read gives up when nothing has come for this long


class IncompleteRead(RuntimeError):
    """The topic could not be read whole (PHI-free: what failed, never a record)."""


class DeadLetterTopic:
    """Reads the dead-letter topic without a consumer group: nothing is committed, nothing is moved."""

    def __init__(self, bootstrap: str, topic: str, client_config: Mapping[str, str] | None = None) -> None:
        self._bootstrap = bootstrap
        self.topic = topic
        self._client_config = dict(client_config or {})

    def _consumer(self, **options: Any) -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="imx-dead-letter-admin",
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=MAX_MESSAGE_BYTES,
            metrics_enabled=False,
            **self._client_config,
            **options,
        )

    def newest(self, limit: int) -> list[ConsumerRecord]:
        """The newest `limit` of each partition, then the newest `limit` of those, oldest first."""
        consumer = self._consumer()
        try:
            numbers = sorted(consumer.partitions_for_topic(self.topic) or [])
            partitions = [TopicPartition(self.topic, p) for p in numbers]
            if not partitions:
                return []
            consumer.assign(partitions)
            ends = consumer.end_offsets(partitions)
            starts = consumer.beginning_offsets(partitions)
            wanted = {}
            for tp in partitions:
                first = max(starts[tp], ends[tp] - limit)
                if first < ends[tp]:
                    consumer.seek(tp, first)
                    wanted[tp] = ends[tp]
                else:
                    consumer.pause(tp)
            records = self._read_until(consumer, wanted)
        finally:
            consumer.close(autocommit=False)
        records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        return records[-limit:]

    def at(self, partition: int, offset: int) -> ConsumerRecord | None:
        consumer = self._consumer()
        try:
            tp = TopicPartition(self.topic, partition)
            if partition not in (consumer.partitions_for_topic(self.topic) or set()):
                return None
            consumer.assign([tp])
            start, end = consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]
            if not start <= offset < end:
                return None
            consumer.seek(tp, offset)
            found = [r for r in self._read_until(consumer, {tp: offset + 1}) if r.offset == offset]
            return found[0] if found else None
        finally:
            consumer.close(autocommit=False)

    @staticmethod
    def _read_until(consumer: KafkaConsumer, ends: dict[TopicPartition, int]) -> list[ConsumerRecord]:
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        pending = {tp for tp, end in ends.items() if consumer.position(tp) < end}
        while pending and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records.extend(r for r in batch if r.offset < ends[tp])
                if consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        return records

    def read_whole(self, on_record: Callable[[ConsumerRecord], None], stalled_after_s: float = STALLED_AFTER_S) -> int:
        """Every record on the topic, from each partition's first to its end when the read began, handed to
        `on_record`; returns how many. Nothing is skipped silently: IncompleteRead when the topic is unknown,
        a partition's position cannot be had, the records in range went meanwhile (a deletion or the
        retention: kafka-python would otherwise jump to the end), or nothing has come for `stalled_after_s`
        while some is still to come. However long the topic, a read that moves goes on."""
        try:
            consumer = self._consumer(auto_offset_reset="none")
        except KafkaError as error:  # no broker at all fails the constructor
            raise IncompleteRead(f"no broker: {type(error).__name__}") from error
        try:
            return self._read_whole(consumer, on_record, stalled_after_s)
        except KafkaError as error:
            raise IncompleteRead(type(error).__name__) from error
        finally:
            consumer.close(autocommit=False)

    def _read_whole(
        self, consumer: KafkaConsumer, on_record: Callable[[ConsumerRecord], None], stalled_after_s: float
    ) -> int:
        partitions = [TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or [])]
        if not partitions:  # the services create it at start: unknown means not read, not empty
            raise IncompleteRead("the dead-letter topic is unknown to the broker")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        read, moved_at = 0, time.monotonic()
        positions: dict[TopicPartition, int] = {}
        while True:
            before, positions = positions, {tp: consumer.position(tp) for tp in partitions}
            if any(position is None for position in positions.values()):
                raise IncompleteRead("a partition's position could not be read")
            if any(positions[tp] > before.get(tp, positions[tp]) for tp in partitions):
                moved_at = time.monotonic()  # progress is a position moving towards its end, nothing else
            done = [tp for tp in partitions if positions[tp] >= ends[tp]]
            if len(done) == len(partitions):
                return read
            consumer.pause(*done)  # letters written since the read began are not fetched for nothing
            if time.monotonic() - moved_at > stalled_after_s:
                raise IncompleteRead(f"nothing read for {stalled_after_s:g} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset < ends[tp]:
                        on_record(record)
                        read += 1

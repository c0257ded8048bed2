"""A handler whose batch writes overlap the next batch (bus.PipelinedFlush, as audit's), against a real
broker: while a backlog keeps batches full the next batch is handled during the write of the one before;
no offset is committed before its batch is written; a failed write has both batches read again, and
nothing is lost."""

from __future__ import annotations

import threading

import pytest
from pymongo.errors import AutoReconnect

from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.pipelined_writes import PipelinedWrites
from tests.integration.bus_helpers import committed_and_end_offsets, run_in_thread, stage_consumer

pytestmark = pytest.mark.integration

BATCH = 10


class OverlappingWriter:
    """Collects each batch's values and writes them as audit's handler does (PipelinedWrites). The first
    write waits until the next batch is being handled (or 20 s), so a bus that overlaps shows it;
    `fail_write` fails that write once, as a database outage would."""

    def __init__(self, fail_write: int | None = None) -> None:
        self.written: list[bytes] = []
        self.handled_during_first_write = False
        self._batch: PipelinedWrites[bytes] = PipelinedWrites(self._write, "test-writer")
        self._writes = 0
        self._fail_write = fail_write
        self._first_write_running = threading.Event()
        self.first_write_began = threading.Event()
        self._next_batch_handled = threading.Event()

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        if self._first_write_running.is_set():
            self.handled_during_first_write = True
            self._next_batch_handled.set()
        self._batch.add(message.value)
        return []

    def flush_begin(self) -> None:
        self._batch.begin()

    def flush_wait(self) -> None:
        self._batch.wait()

    def discard(self) -> None:
        self._batch.discard()

    def _write(self, values: list[bytes]) -> int:
        self._writes += 1
        if self._writes == 1:
            self._first_write_running.set()
            self.first_write_began.set()
            self._next_batch_handled.wait(20)
            self._first_write_running.clear()
        if self._writes == self._fail_write:
            raise AutoReconnect("connection reset")
        self.written.extend(values)
        return len(values)


def _stage_with_backlog(bootstrap: str, name: str) -> tuple[str, str, BusProducer, StageConsumer]:
    """A topic holding five batches, and a stage's consumer of it in batches of BATCH: (topic, group,
    producer, consumer)."""
    topic, group = f"{name}.in", f"{name}-g"
    ensure_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=1)
    producer = BusProducer(bootstrap)
    producer.publish([OutgoingMessage(topic, str(i).encode(), b"k") for i in range(5 * BATCH)])
    consumer = stage_consumer(bootstrap, producer, [topic], group, f"{topic}.dlq", max_batch=BATCH, retry_backoff_s=0.1)
    return topic, group, producer, consumer


def test_the_next_batch_is_handled_while_the_last_is_written_and_committed_only_after(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, group, producer, consumer = _stage_with_backlog(kafka_bootstrap, unique_name)
    writer = OverlappingWriter()
    committed_while_writing: dict[int, int] | None = None
    try:
        for _ in range(20):
            consumer.poll_once(writer)
            if writer.first_write_began.is_set():
                break
        consumer.commit_owed()  # nothing is owed: the batch being written is not committed
        committed_while_writing, _end = committed_and_end_offsets(kafka_bootstrap, topic, group)
        for _ in range(20):
            consumer.poll_once(writer)
            if len(writer.written) == 5 * BATCH:
                break
    finally:
        consumer.close()
    assert writer.handled_during_first_write, "the second batch was handled while the first was written"
    assert committed_while_writing in ({}, {0: 0}), "no offset committed before its batch was written"
    assert sorted(writer.written, key=int) == [str(i).encode() for i in range(5 * BATCH)]
    committed, end = committed_and_end_offsets(kafka_bootstrap, topic, group)
    assert committed == end == {0: 5 * BATCH}
    producer.close()


def test_a_failed_write_reads_its_batch_and_the_next_again_and_loses_nothing(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, group, producer, consumer = _stage_with_backlog(kafka_bootstrap, unique_name)
    writer = OverlappingWriter(fail_write=1)  # the first batch's write fails after the second was handled
    stop = threading.Event()
    thread = run_in_thread(consumer, writer, stop)
    try:
        for _ in range(300):
            if len(set(writer.written)) == 5 * BATCH:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
    assert not thread.errors, "the stage kept running"  # type: ignore[attr-defined]
    assert writer.handled_during_first_write
    assert sorted(set(writer.written), key=int) == [str(i).encode() for i in range(5 * BATCH)]
    assert len(writer.written) == 5 * BATCH, "the batch handled during the failed write was written once"
    committed, end = committed_and_end_offsets(kafka_bootstrap, topic, group)
    assert committed == end == {0: 5 * BATCH}
    producer.close()

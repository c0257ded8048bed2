"""A stage against a real broker when its database or disk fails: the input is read again and
processed once the outage ends; nothing reaches the dead-letter topic and the stage keeps running."""

from __future__ import annotations

import errno
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pymongo.errors import AutoReconnect

from services.common.bus import BusProducer, Handler, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from tests.integration.bus_helpers import committed_and_end_offsets, read_all, run_in_thread, stage_consumer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_database_and_disk_outages_in_a_handler_are_retried_not_dead_lettered(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    group = f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, str(i).encode(), b"k") for i in range(8)])
    failures = {
        b"2": [AutoReconnect("primary gone"), AutoReconnect("primary gone")],
        b"5": [OSError(errno.ENOSPC, "No space left on device")],
    }
    attempts: Counter[bytes] = Counter()
    done, stop = threading.Event(), threading.Event()

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        attempts[message.value] += 1
        pending = failures.get(message.value)
        if pending:
            raise pending.pop(0)
        if message.value == b"7":
            done.set()
        return [OutgoingMessage(out, message.value, message.key)]

    consumer = stage_consumer(kafka_bootstrap, producer, [topic], group, dlq, max_batch=20, retry_backoff_s=0.1)
    thread = run_in_thread(consumer, handler, stop)
    try:
        assert done.wait(60), "the stage processed everything after the outages"
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
    assert not thread.errors, "the stage kept running"  # type: ignore[attr-defined]
    assert attempts[b"2"] == 3 and attempts[b"5"] == 2
    assert sorted(r.value for r in read_all(kafka_bootstrap, out, expected=8)) == [str(i).encode() for i in range(8)]
    assert read_all(kafka_bootstrap, dlq, expected=1, timeout_s=3) == []
    committed, end = committed_and_end_offsets(kafka_bootstrap, topic, group)
    assert committed == end == {0: 8}
    producer.close()


class FlushFailing:
    """A handler that writes its batch in flush() (as audit does) against a database that is away for the
    first `failures` flushes, or (None) until `mended` is set."""

    def __init__(self, out: str, failures: int | None = None) -> None:
        self.out = out
        self.failures = failures
        self.flushes = 0
        self.mended = threading.Event()
        self.done = threading.Event()

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        return [OutgoingMessage(self.out, message.value)]

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes <= self.failures if self.failures is not None else not self.mended.is_set():
            raise AutoReconnect("connection reset")
        self.done.set()


def test_a_database_outage_in_a_batch_flush_is_retried_and_the_stage_keeps_running(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    group = f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, b"x", b"k")])
    handler, stop = FlushFailing(out, failures=1), threading.Event()
    consumer = stage_consumer(kafka_bootstrap, producer, [topic], group, dlq, retry_backoff_s=0.1)
    thread = run_in_thread(consumer, handler, stop)
    try:
        assert handler.done.wait(60)
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
    assert not thread.errors  # type: ignore[attr-defined]
    assert [r.value for r in read_all(kafka_bootstrap, out, expected=1)] == [b"x"]
    assert read_all(kafka_bootstrap, dlq, expected=1, timeout_s=3) == []
    producer.close()


class Health:
    """What the stage says on its health service (the ControlServer's two calls), with when."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def mark_serving(self) -> None:
        self.said.append("SERVING")

    def mark_not_serving(self) -> None:
        self.said.append("NOT_SERVING")


@contextmanager
def stage_reporting_health(
    bootstrap: str, producer: BusProducer, topic: str, dlq: str, handler: Handler
) -> Iterator[Health]:
    """A stage reading `topic` on a thread, a record or batch counted stuck after 1 s; what it says on its
    health service."""
    stop, health = threading.Event(), Health()
    consumer = stage_consumer(bootstrap, producer, [topic], f"{topic}-g", dlq, retry_backoff_s=0.1, stuck_after_s=1.0)
    thread = threading.Thread(target=consumer.run, args=(handler, stop, health), daemon=True)
    thread.start()
    try:
        yield health
    finally:
        stop.set()
        thread.join(30)
        consumer.close()


def test_a_record_that_keeps_failing_transiently_makes_the_stage_not_ready_until_it_gets_through(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """EIO reading one damaged blob is "transient" (the disk may come back): the record is read again
    and its partition waits. It had waited for ever with the stage's health SERVING."""
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, str(i).encode(), b"k") for i in range(3)])
    mended, done = threading.Event(), threading.Event()

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if message.value == b"1" and not mended.is_set():
            raise OSError(errno.EIO, "Input/output error")
        if message.value == b"2":
            done.set()
        return [OutgoingMessage(out, message.value, message.key)]

    with stage_reporting_health(kafka_bootstrap, producer, topic, dlq, handler) as health:
        wait_for(lambda: health.said == ["NOT_SERVING"], 30, "the stage says it is not ready")
        assert "holds its partition" in caplog.text and not done.is_set()
        mended.set()
        assert done.wait(30), "the record got through, and the rest after it"
        wait_for(lambda: health.said == ["NOT_SERVING", "SERVING"], 10, "ready again")
    producer.close()
    assert sorted(r.value for r in read_all(kafka_bootstrap, out, expected=3)) == [b"0", b"1", b"2"]


def test_batches_that_keep_failing_make_the_stage_not_ready_until_one_gets_through(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, b"1", b"k")])
    handler = FlushFailing(out)
    with stage_reporting_health(kafka_bootstrap, producer, topic, dlq, handler) as health:
        wait_for(lambda: health.said == ["NOT_SERVING"], 30, "the stage says it is not ready")
        handler.mended.set()
        assert handler.done.wait(30), "the batch got through"
        wait_for(lambda: health.said == ["NOT_SERVING", "SERVING"], 10, "ready again")
    producer.close()

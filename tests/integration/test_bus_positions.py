"""Lag and commits of a stage against a real broker: lag from the positions the client already holds,
offsets committed once the outputs are acknowledged, at most every `commit_interval_s` while busy."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.positions import ConsumerPositions
from services.common.stats import StageStats
from tests.integration.bus_helpers import committed_and_end_offsets, read_all, stage_consumer

pytestmark = pytest.mark.integration


def _publish(bootstrap: str, topic: str, count: int) -> None:
    producer = BusProducer(bootstrap)
    try:
        producer.publish([OutgoingMessage(topic, str(i).encode(), b"k") for i in range(count)])
    finally:
        producer.close()


def _slow_committing_stage(
    bootstrap: str, unique_name: str, records: int, max_batch: int
) -> tuple[BusProducer, StageConsumer]:
    """`records` waiting on `<name>.in` (one partition) and a stage of group `<name>-g` over them that
    publishes to `<name>.out` and would commit by time only after an hour."""
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(bootstrap, [topic, out, dlq], partitions=1)
    _publish(bootstrap, topic, records)
    producer = BusProducer(bootstrap)
    consumer = stage_consumer(
        bootstrap, producer, [topic], f"{unique_name}-g", dlq, max_batch=max_batch, commit_interval_s=3600
    )
    return producer, consumer


def test_positions_and_lag_are_the_clients_own_without_asking_the_broker(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}.in"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    _publish(kafka_bootstrap, topic, 30)
    tp, other = TopicPartition(topic, 0), TopicPartition(f"{unique_name}.other", 0)
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        consumer.assign([tp])
        positions = ConsumerPositions(consumer)
        assert positions.position(tp) is None and positions.lag() == {}, "nothing known before the first poll"
        read = 0
        deadline = time.monotonic() + 30
        while read == 0 and time.monotonic() < deadline:
            read = sum(len(batch) for batch in consumer.poll(timeout_ms=500, max_records=10).values())
        assert read == 10
        assert positions.position(tp) == 10 == consumer.position(tp), "the same position the client's API gives"
        assert positions.lag() == {(topic, 0): 20}
        assert positions.position(other) is None, "a partition not assigned has no position"
        consumer.seek(tp, 25)
        assert positions.position(tp) == 25 and positions.lag() == {(topic, 0): 5}, "a seek moves it"
    finally:
        consumer.close()


def _identity(out: str) -> Callable[[IncomingMessage], list[OutgoingMessage]]:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        return [OutgoingMessage(out, message.value, message.key)]

    return handler


def test_a_paused_stage_reports_the_records_waiting_for_it(kafka_bootstrap: str, unique_name: str) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    _publish(kafka_bootstrap, topic, 20)
    producer = BusProducer(kafka_bootstrap)
    stats = StageStats("test")
    consumer = stage_consumer(kafka_bootstrap, producer, [topic], f"{unique_name}-g", dlq, stats=stats, max_batch=5)
    try:
        deadline = time.monotonic() + 30
        while consumer.poll_once(_identity(out)) == 0 and time.monotonic() < deadline:
            pass
        stats.set_paused(True)  # an operator's pause: nothing more is read, the lag stays visible
        time.sleep(2.1)  # the lag is refreshed every 2 s
        consumer.poll_once(_identity(out))
        assert stats.snapshot().lag == {(topic, 0): 15}
        stats.set_paused(False)
        deadline = time.monotonic() + 30
        while stats.snapshot().processed < 20 and time.monotonic() < deadline:
            consumer.poll_once(_identity(out))
        time.sleep(2.1)
        consumer.poll_once(_identity(out))
        assert stats.snapshot().lag == {(topic, 0): 0}
    finally:
        consumer.close()
        producer.close()


def test_a_busy_stage_commits_once_per_interval_and_everything_when_idle(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, out, group = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}-g"
    producer, consumer = _slow_committing_stage(kafka_bootstrap, unique_name, records=20, max_batch=5)
    try:
        deadline = time.monotonic() + 30
        handled = 0
        while handled < 20 and time.monotonic() < deadline:
            handled += consumer.poll_once(_identity(out))
        assert handled == 20
        assert len(read_all(kafka_bootstrap, out, expected=20)) == 20, "every output acknowledged"
        committed, end = committed_and_end_offsets(kafka_bootstrap, topic, group)
        assert committed[0] < end[0] == 20, "a busy stage does not commit after every batch"
        while consumer.poll_once(_identity(out)) and time.monotonic() < deadline:
            pass
        assert committed_and_end_offsets(kafka_bootstrap, topic, group) == ({0: 20}, {0: 20}), (
            "a poll that finds nothing commits what was handled"
        )
    finally:
        consumer.close()
        producer.close()


def test_close_commits_what_was_handled(kafka_bootstrap: str, unique_name: str) -> None:
    topic, out, group = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}-g"
    producer, consumer = _slow_committing_stage(kafka_bootstrap, unique_name, records=10, max_batch=10)
    deadline = time.monotonic() + 30
    while consumer.poll_once(_identity(out)) == 0 and time.monotonic() < deadline:
        pass
    consumer.close()
    producer.close()
    assert committed_and_end_offsets(kafka_bootstrap, topic, group) == ({0: 10}, {0: 10})


def test_a_stage_that_keeps_up_asks_no_end_offsets_and_one_behind_does(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane gate asks the broker for the urgent lane's end offsets (ListOffsets) only while a lower
    lane is read from a backlog, i.e. after a full batch; a poll that returned less drained what was
    fetched, and the next one fetches every lane anyway."""
    urgent, routine, out, dlq = (f"{unique_name}.{n}" for n in ("urgent", "routine", "out", "dlq"))
    ensure_topics(kafka_bootstrap, [urgent, routine, out, dlq], partitions=1)
    asked: list[int] = []
    end_offsets = KafkaConsumer.end_offsets

    def counted(self: KafkaConsumer, *args: object, **kwargs: object) -> object:
        asked.append(1)
        return end_offsets(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(KafkaConsumer, "end_offsets", counted)
    producer = BusProducer(kafka_bootstrap)
    consumer = stage_consumer(
        kafka_bootstrap,
        producer,
        [urgent, routine],
        f"{unique_name}-g",
        dlq,
        max_batch=5,
        lane_of={urgent: "urgent", routine: "routine"}.get,
    )
    try:

        def handle_all(count: int) -> None:
            handled, deadline = 0, time.monotonic() + 30
            while handled < count and time.monotonic() < deadline:
                handled += consumer.poll_once(_identity(out))
                time.sleep(0.25)  # past the gate's probe interval: only `busy` decides
            assert handled == count

        _publish(kafka_bootstrap, routine, 3)
        handle_all(3)
        consumer.poll_once(_identity(out))  # the gate runs before each poll
        assert asked == [], "a stage keeping up with its input does not ask"
        _publish(kafka_bootstrap, routine, 40)
        handle_all(40)
        assert asked, "a stage reading full batches from a backlog asks"
    finally:
        consumer.close()
        producer.close()

"""Small helpers the bus tests share: a stage's consumer and polling it until it joined or read a
topic, read a whole topic, ask the broker for committed offsets, limit the size of a topic's records, a
broker that answers only once told to."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.structs import TopicPartition

from services.common.bus import BusProducer, Handler, StageConsumer
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.stats import StageStats


def stage_consumer(
    bootstrap: str,
    producer: BusProducer,
    topics: Sequence[str],
    group_id: str,
    dead_letter_topic: str,
    *,
    stage: str = "test",
    stats: StageStats | None = None,
    **options: Any,
) -> StageConsumer:
    """A stage's consumer of `topics` in group `group_id`, with fresh stats of `stage` unless given;
    `options` as StageConsumer takes them."""
    return StageConsumer(
        bootstrap=bootstrap,
        group_id=group_id,
        topics=topics,
        producer=producer,
        dead_letter_topic=dead_letter_topic,
        stage=stage,
        stats=stats if stats is not None else StageStats(stage),
        **options,
    )


class TopicsRead:
    """A stage's handler that only notes the topic of each message it is given."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        self.topics.append(message.topic)
        return []


def poll_until_joined(consumer: StageConsumer, handler: Handler, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not consumer._consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never joined its group"
        consumer.poll_once(handler)


def poll_until_read(
    consumer: StageConsumer, handler: TopicsRead, topic: str, timeout_s: float, between_polls_s: float = 0.0
) -> None:
    """Poll (pausing `between_polls_s` after each, as a stage busy with its batch would) until a message
    of `topic` was handled; fails after `timeout_s`, naming what the consumer was assigned."""
    deadline = time.monotonic() + timeout_s
    while topic not in handler.topics:
        assigned = sorted(tp.topic for tp in consumer._consumer.assignment())
        assert time.monotonic() < deadline, f"nothing of {topic} was read; assigned: {assigned}"
        consumer.poll_once(handler)
        time.sleep(between_polls_s)


def run_in_thread(consumer: StageConsumer, handler: Handler, stop: threading.Event) -> threading.Thread:
    """`consumer.run(handler, stop)` on a daemon thread; an error that ends it is kept in the thread's
    `errors` (a list), for a test that asserts the stage did not end."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(handler, stop)
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=target, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _from_the_beginning(bootstrap: str, topic: str, deadline: float) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A consumer without a group, assigned every partition of `topic` (once the broker names them, or
    the deadline passes), each at its beginning."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
    )
    while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
        time.sleep(0.2)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return consumer, partitions


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:  # type: ignore[type-arg]
    """Every record of `topic` (no group, from the beginning) once `expected` have arrived or time is up."""
    deadline = time.monotonic() + timeout_s
    consumer, _partitions = _from_the_beginning(bootstrap, topic, deadline)
    try:
        records: list = []  # type: ignore[type-arg]
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list:  # type: ignore[type-arg]
    """Every record of `topic` up to its end offsets as they are now (no group, from the beginning):
    for a topic that may hold redelivered copies, where a count of records says nothing."""
    deadline = time.monotonic() + timeout_s
    consumer, partitions = _from_the_beginning(bootstrap, topic, deadline)
    try:
        end = consumer.end_offsets(partitions)
        records: list = []  # type: ignore[type-arg]
        while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def committed_and_end_offsets(bootstrap: str, topic: str, group: str) -> tuple[dict[int, int], dict[int, int]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        committed = {tp.partition: consumer.committed(tp) or 0 for tp in partitions}
        end = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
        return committed, end
    finally:
        consumer.close(autocommit=False)


def limit_records(bootstrap: str, topic: str, max_bytes: int, create: bool = False) -> None:
    """Create `topic` (one partition) taking records of at most `max_bytes`, or set an existing one's limit."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if create:
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(max_bytes)})])
        else:
            admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)})]
            )
    finally:
        admin.close()


class LateBroker:
    """A TCP forwarder to the real broker that starts listening only when `open()` is called: until
    then its port refuses connections, as a broker that is down does. (Metadata then points clients at
    the real broker directly.)"""

    def __init__(self, port: int, target: str) -> None:
        host, _, target_port = target.rpartition(":")
        self.port, self._target = port, (host, int(target_port))
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

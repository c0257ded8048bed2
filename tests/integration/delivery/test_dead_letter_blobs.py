"""An accepted instance that no stage could process is dead-lettered, and an operator replays it once the
defect is fixed: its object must still be there for as long as its dead letter is. Before, the blob
lifecycle deleted it seven days after it was written, whatever the dead-letter topic kept. Against the
session's real broker and MongoDB-wire server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import TopicPartition
from pymongo.database import Database

from services.audit.dead_letters import DeadLetters
from services.common.blob_lifecycle import collect
from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer, ensure_topics
from services.common.dead_letter_blobs import DeadLetterBlobs
from services.common.dead_letter_topic import DeadLetterTopic, IncompleteRead
from services.common.events import event_message
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.service_access import ServiceAccess
from services.common.settings import ServiceSettings, retention_ms
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, DeliveredObjects
from services.delivery.owed_blobs import OwedBlobs
from services.proto_gen.imx.v1 import events_pb2
from tests.conftest import KafkaInternal
from tests.integration.bus_helpers import read_all, stage_consumer

pytestmark = pytest.mark.integration

WEEK_S = 7 * 24 * 3600


def _aged(store: LocalBlobStore, data: bytes) -> str:
    """An object last written eight days ago: past the lifecycle's seven-day retention."""
    sha256 = store.put(data)
    old = time.time() - 8 * 24 * 3600
    os.utime(store.path_for(sha256), (old, old))
    return sha256


def _dead_letter_a_prepared_instance(bootstrap: str, topics: Topics, group: str, blob: str, source: str) -> None:
    """delivery's stage fails on the instance for good: the bus dead-letters it."""
    prepared = events_pb2.InstancePrepared(
        blob=events_pb2.BlobRef(sha256=blob, size=5), source_blob=events_pb2.BlobRef(sha256=source, size=6)
    )
    producer = BusProducer(bootstrap)
    producer.publish([event_message(topics.prepared_lanes[1], prepared, "2.25.9")])
    failed: list[IncomingMessage] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        failed.append(message)
        raise ValueError("a defect in this stage")

    consumer = stage_consumer(bootstrap, producer, topics.prepared_lanes, group, topics.dead_letter)
    deadline = time.monotonic() + 60
    try:
        while not failed:
            assert time.monotonic() < deadline, "the stage never read the instance"
            consumer.poll_once(handler)
    finally:
        consumer.close()
        producer.close()


def test_the_objects_a_dead_letter_names_outlive_the_retention(
    kafka_bootstrap: str, db: Database, unique_name: str, tmp_path: Path
) -> None:
    topics = Topics(f"{unique_name}.")
    ensure_topics(kafka_bootstrap, topics.pipeline(), partitions=2)
    store = LocalBlobStore(tmp_path / "blobs")
    copy, source, unowed, owed = (_aged(store, data) for data in (b"copy!", b"source", b"other", b"owed!"))
    _dead_letter_a_prepared_instance(kafka_bootstrap, topics, f"{unique_name}-delivery", copy, source)
    delivered = DeliveredObjects(db)
    delivered.record(
        [DeliveredInstance("lab", "2.25.1", "2.25.1.1", "2.25.1.1.1", "1.2.3", "1.2.840.10008.1.2.1", owed, 5, "d-1")]
    )

    dead_letters = DeadLetterBlobs(DeadLetterTopic(kafka_bootstrap, topics.dead_letter))
    result = collect(store.root, OwedBlobs(delivered, dead_letters), WEEK_S)

    assert result.deleted == 1 and not store.exists(unowed), "an object nothing names still goes"
    assert store.exists(copy) and store.exists(source), "the dead letter's copy and what it was made from stay"
    assert store.exists(owed), "and what a partner is owed, as before"

    # An operator gives up on the letter (`imx dlq discard`): its objects go at the next collection, unless
    # another letter, not discarded, names them too.
    dead_letter_topic = DeadLetterTopic(kafka_bootstrap, topics.dead_letter)
    [letter] = read_all(kafka_bootstrap, topics.dead_letter, expected=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topics.dead_letter, letter.value, letter.key, dict(letter.headers))])
    producer.close()
    [_, other] = read_all(kafka_bootstrap, topics.dead_letter, expected=2)
    audit = DeadLetters(dead_letter_topic, db, producer=lambda: BusProducer(kafka_bootstrap))
    # As delivery's timer and `imx blobs gc` build it.
    discarding = OwedBlobs.of(
        ServiceSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topics.prefix), delivered, db
    )
    assert audit.discard(letter.partition, letter.offset)
    assert collect(store.root, discarding, WEEK_S).deleted == 0, "the other letter keeps them"
    assert audit.discard(other.partition, other.offset)
    assert collect(store.root, discarding, WEEK_S).deleted == 2
    assert not store.exists(copy) and not store.exists(source) and store.exists(owed)


def test_a_dead_letter_topic_that_cannot_be_read_deletes_nothing(
    kafka_bootstrap: str, db: Database, unique_name: str, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    old = _aged(store, b"old")
    unknown = DeadLetterBlobs(DeadLetterTopic(kafka_bootstrap, f"{unique_name}.imx.deadletter.v1"))
    with pytest.raises(IncompleteRead):
        collect(store.root, OwedBlobs(DeliveredObjects(db), unknown), WEEK_S)
    assert store.exists(old)


def test_a_read_that_finds_letters_gone_under_it_fails_instead_of_skipping_them(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """Records deleted below the position a read began at (an operator deleting letters, the retention)
    made kafka-python jump to the partition's end: the letters after them went unread, and the objects they
    name unowed."""
    topic = f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    # Letters of a MiB each (a value too large is dropped, headers kept): a fetch brings at most 16 MiB,
    # so the read takes three of them; between the first and the second, the letters up to 40 go.
    big = OutgoingMessage(topic, b"x" * (1024 * 1024), b"2.25.2", {"imx-stage": b"deid"})
    producer.publish([big] * 44)
    producer.close()
    reader = DeadLetterTopic(kafka_bootstrap, topic)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:

        def delete_letters_ahead(record: object) -> None:
            if getattr(record, "offset", -1) == 0:  # the read has begun: letters it has not fetched go
                admin.delete_records({TopicPartition(topic, 0): 40})

        with pytest.raises(IncompleteRead):
            reader.read_whole(delete_letters_ahead, stalled_after_s=10)
        assert reader.read_whole(lambda record: None) == 4, "a read after the deletion takes what is left"
    finally:
        admin.close()


def _retention_ms(admin: KafkaAdminClient, topic: str, expected: str) -> str:
    """The topic's retention.ms once the broker describes it as `expected`, or what it describes after 30 s.
    A topic made a moment ago may not be described yet, and in KRaft mode a broker applies a change the
    controller committed when its metadata catches up, so it may describe the old value for a moment."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})
    deadline = time.monotonic() + 30
    while True:
        described = admin.describe_configs([resource], config_filter="all").get("topic", {}).get(topic, {})
        value = str(described["retention.ms"]["value"]) if "retention.ms" in described else None
        if value == expected or (value is not None and time.monotonic() >= deadline):
            return value
        assert time.monotonic() < deadline, f"the broker never described {topic}"
        time.sleep(0.2)


def test_the_dead_letters_keep_their_retention_in_new_and_older_deployments(
    kafka_internal: KafkaInternal, unique_name: str
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_internal.bootstrap, **kafka_internal.admin_config)
    access = ServiceAccess(kafka_internal.bootstrap, kafka_internal.admin_config)
    try:
        new = Topics(f"{unique_name}-new.")
        access.apply({}, new, partitions=1, wait_s=60)
        assert _retention_ms(admin, new.dead_letter, str(retention_ms(30))) == str(retention_ms(30)), (
            "thirty days unless told"
        )
        assert _retention_ms(admin, new.ingested, str(WEEK_S * 1000)) == str(WEEK_S * 1000), (
            "the other topics keep the broker's week"
        )

        # A topic made before, on the broker's week: the set-up gives it the retention it is told.
        older = Topics(f"{unique_name}-older.")
        ensure_topics(kafka_internal.bootstrap, older.pipeline(), 1, client_config=kafka_internal.admin_config)
        assert _retention_ms(admin, older.dead_letter, str(WEEK_S * 1000)) == str(WEEK_S * 1000)
        access.apply({}, older, partitions=1, wait_s=60, dead_letter_retention_ms=-1)
        assert _retention_ms(admin, older.dead_letter, "-1") == "-1"
        with pytest.raises(RuntimeError, match=r"retention\.ms failed"):  # the broker's refusal is not a success
            access.set_retention({older.dead_letter: -7})
    finally:
        admin.close()

"""An accepted instance that no stage could process is dead-lettered, and an operator replays it once the
defect is fixed: its object must still be there, however long that takes. Before, the blob lifecycle
deleted it seven days after it was written, and the dead letter itself went with the broker's seven-day
retention. Against the session's real broker and MongoDB-wire server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from pymongo.database import Database

from services.common.blob_lifecycle import collect
from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer, ensure_topics
from services.common.dead_letter_blobs import DeadLetterBlobs, DeadLettersUnread
from services.common.events import event_message
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.service_access import ServiceAccess
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, DeliveredObjects
from services.delivery.owed_blobs import OwedBlobs
from services.proto_gen.imx.v1 import events_pb2
from tests.conftest import KafkaInternal
from tests.integration.bus_helpers import stage_consumer

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
    ensure_topics(kafka_bootstrap, topics.pipeline(), partitions=2, kept=topics.kept_until_deleted)
    store = LocalBlobStore(tmp_path / "blobs")
    copy, source, unowed, owed = (_aged(store, data) for data in (b"copy!", b"source", b"other", b"owed!"))
    _dead_letter_a_prepared_instance(kafka_bootstrap, topics, f"{unique_name}-delivery", copy, source)
    delivered = DeliveredObjects(db)
    delivered.record(
        [DeliveredInstance("lab", "2.25.1", "2.25.1.1", "2.25.1.1.1", "1.2.3", "1.2.840.10008.1.2.1", owed, 5, "d-1")]
    )

    result = collect(store.root, OwedBlobs(delivered, DeadLetterBlobs(kafka_bootstrap, topics.dead_letter)), WEEK_S)

    assert result.deleted == 1 and not store.exists(unowed), "an object nothing names still goes"
    assert store.exists(copy) and store.exists(source), "the dead letter's copy and what it was made from stay"
    assert store.exists(owed), "and what a partner is owed, as before"


def test_a_dead_letter_topic_that_cannot_be_read_deletes_nothing(
    kafka_bootstrap: str, db: Database, unique_name: str, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    old = _aged(store, b"old")
    unknown = DeadLetterBlobs(kafka_bootstrap, f"{unique_name}.imx.deadletter.v1", timeout_s=5)
    with pytest.raises(DeadLettersUnread):
        collect(store.root, OwedBlobs(DeliveredObjects(db), unknown), WEEK_S)
    assert store.exists(old)


def _retention_ms(admin: KafkaAdminClient, topic: str) -> str:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})
    return str(admin.describe_configs([resource], config_filter="all")["topic"][topic]["retention.ms"]["value"])


def test_dead_letters_are_kept_until_deleted_in_new_and_older_deployments(
    kafka_internal: KafkaInternal, unique_name: str
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_internal.bootstrap, **kafka_internal.admin_config)
    access = ServiceAccess(kafka_internal.bootstrap, kafka_internal.admin_config)
    try:
        new = Topics(f"{unique_name}-new.")
        access.apply({}, new, partitions=1, wait_s=60)
        assert _retention_ms(admin, new.dead_letter) == "-1"
        assert _retention_ms(admin, new.ingested) == str(WEEK_S * 1000), "the other topics keep the broker's week"

        # Topics made before: the dead letters on the broker's week, and one an operator set to a month.
        older, chosen = Topics(f"{unique_name}-older."), Topics(f"{unique_name}-chosen.")
        ensure_topics(kafka_internal.bootstrap, older.pipeline(), 1, client_config=kafka_internal.admin_config)
        ensure_topics(kafka_internal.bootstrap, chosen.pipeline(), 1, client_config=kafka_internal.admin_config)
        month = str(30 * 24 * 3600 * 1000)
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, chosen.dead_letter, configs={"retention.ms": month})],
            incremental=True,
        )
        access.apply({}, older, partitions=1, wait_s=60)
        access.apply({}, chosen, partitions=1, wait_s=60)
        assert _retention_ms(admin, older.dead_letter) == "-1", "an upgrade's set-up keeps them"
        assert _retention_ms(admin, chosen.dead_letter) == month, "an operator's own retention stays"
        assert access.keep_records([older.dead_letter]) == [], "a second set-up changes nothing"
    finally:
        admin.close()

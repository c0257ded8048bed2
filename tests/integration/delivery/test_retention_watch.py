"""The retention watch against a real broker and MongoDB-wire server: it reads a partner's unread
backlog from its gateway group's committed offsets, sees messages deleted before they were read, and
turns deliveries older than the retention that were never stored into failed outcomes, once."""

from __future__ import annotations

from collections.abc import Callable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata, TopicPartition
from pymongo.database import Database

from services.common.messages import OutgoingMessage
from services.common.service_access import central_gateway_group
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, DeliveredObjects
from services.delivery.retention_watch import KafkaBacklogReader, RetentionWatch
from services.proto_gen.imx.v1 import events_pb2

HOUR_MS = 3600 * 1000


def _feed(kafka_bootstrap: str, topic: str, messages: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"retention.ms": str(10 * HOUR_MS)})])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n in range(messages):
        producer.send(topic, f"m{n}".encode(), partition=0)
    producer.flush()
    producer.close()


def _commit(kafka_bootstrap: str, group: str, topic: str, offset: int) -> None:
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close()


def _watch(
    kafka_bootstrap: str,
    partner: str,
    topics: Topics,
    delivered: DeliveredObjects,
    published: list[OutgoingMessage],
    now: int,
) -> RetentionWatch:
    """The watch over `partner`'s feed on the real broker, publishing into `published`, at `now`."""
    return RetentionWatch(
        partners=lambda: [partner],
        feed_topics=lambda p: [topics.partner(p)],
        read_lag=KafkaBacklogReader(kafka_bootstrap).partner_lag,
        unstored=delivered.unstored,
        mark_expired=delivered.mark_expired,
        publish=published.extend,
        topics=topics,
        clock=lambda: now,
    )


def test_the_backlog_of_the_partners_slowest_group_and_what_expired_unread(
    kafka_bootstrap: str, make_name: Callable[[str], str]
) -> None:
    partner = make_name("p")
    topics = Topics(make_name("rw") + ".")
    feed = topics.partner(partner)
    _feed(kafka_bootstrap, feed, 10)
    reader = KafkaBacklogReader(kafka_bootstrap, topic_prefix=topics.prefix)

    never_read = reader.partner_lag(partner, [feed])
    assert (never_read.retention_ms, never_read.unread, never_read.expired) == (10 * HOUR_MS, 10, 0)

    _commit(kafka_bootstrap, f"{partner}.gateway", feed, 8)
    _commit(kafka_bootstrap, central_gateway_group(partner, topics.prefix), feed, 4)  # the slowest group counts
    _commit(kafka_bootstrap, f"other-{partner}.gateway", feed, 0)  # not this partner's group
    lag = reader.partner_lag(partner, [feed])
    assert (lag.unread, lag.expired) == (6, 0)
    assert lag.partitions[0].oldest_unread_ms is not None

    # Retention deletes the first seven messages before the slow group read them.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(feed, 0): 7})
    finally:
        admin.close()
    after = reader.partner_lag(partner, [feed])
    assert (after.unread, after.expired) == (3, 3)


def test_deliveries_older_than_the_retention_never_stored_become_failed_outcomes_once(
    db: Database, kafka_bootstrap: str, make_name: Callable[[str], str]
) -> None:
    partner = make_name("p")
    topics = Topics(make_name("rw") + ".")
    feed = topics.partner(partner)
    _feed(kafka_bootstrap, feed, 3)
    _commit(kafka_bootstrap, f"{partner}.gateway", feed, 0)  # its gateway read none of them
    delivered = DeliveredObjects(db)
    now = 100 * HOUR_MS

    def item(n: int, at_ms: int) -> DeliveredInstance:
        return DeliveredInstance(
            partner_id=partner,
            study_uid="2.25.1",
            series_uid="2.25.2",
            sop_uid=f"2.25.3.{n}",
            sop_class_uid="",
            transfer_syntax_uid="",
            sha256=f"{n:064x}",
            size=1,
            delivery_id=f"d{n}",
            source_study_uid="1.2.3",
            delivered_at_ms=at_ms,
        )

    old, recent = item(1, now - 11 * HOUR_MS), item(2, now - 1 * HOUR_MS)
    delivered.record([old, recent])
    published: list[OutgoingMessage] = []
    watch = _watch(kafka_bootstrap, partner, topics, delivered, published, now)
    # Older than the retention, but the broker still holds every message (it deletes whole segments,
    # late): the partner may yet read it, and it was reported expired and then stored.
    watch.check()
    assert published == [] and len(list(delivered.unstored())) == 2
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(feed, 0): 2})  # retention dropped two unread
    finally:
        admin.close()
    watch.check()
    watch.check()
    assert len(published) == 1, "declared once"
    outcome = events_pb2.DeliveryOutcome.FromString(published[0].value)
    assert (outcome.instance.sop_instance_uid, outcome.detail) == ("2.25.3.1", "expired-unread")
    assert [i.sop_uid for i in delivered.unstored()] == ["2.25.3.2"]
    assert old.sha256 in delivered.unstored_blobs(), "an expired delivery's object is still kept"


def test_a_partner_that_never_read_its_feed_has_old_deliveries_expired_by_age(
    db: Database, kafka_bootstrap: str, make_name: Callable[[str], str]
) -> None:
    """Without a committed offset (its gateway never ran, or its offsets were deleted) nothing can be
    counted lost: waiting for a loss left such deliveries without an outcome for ever. (A partition the
    broker has deleted nothing from is not such a case: lanes a partner never got anything on have no
    offsets either, and expiring by age there was the bug the count fixed.)"""
    partner = make_name("p")
    topics = Topics(make_name("rw") + ".")
    feed = topics.partner(partner)
    _feed(kafka_bootstrap, feed, 2)
    delivered = DeliveredObjects(db)
    now = 100 * HOUR_MS
    old = DeliveredInstance(
        partner_id=partner, study_uid="2.25.1", series_uid="2.25.2", sop_uid="2.25.3.9", sop_class_uid="",
        transfer_syntax_uid="", sha256=f"{9:064x}", size=1, delivery_id="d9", source_study_uid="1.2.3",
        delivered_at_ms=now - 11 * HOUR_MS,
    )  # fmt: skip
    delivered.record([old])
    published: list[OutgoingMessage] = []
    watch = _watch(kafka_bootstrap, partner, topics, delivered, published, now)
    watch.check()
    assert published == [], "nothing deleted yet: the broker may still hold it"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(feed, 0): 1})  # retention dropped one, read by nobody
    finally:
        admin.close()
    watch.check()
    outcomes = [events_pb2.DeliveryOutcome.FromString(m.value) for m in published if m.topic == topics.outcomes]
    assert [(o.instance.sop_instance_uid, o.detail) for o in outcomes] == [("2.25.3.9", "expired-unread")]


def test_a_delivery_sent_again_that_expires_again_gets_an_outcome_of_its_own(
    db: Database, kafka_bootstrap: str, make_name: Callable[[str], str]
) -> None:
    """Ingest publishes a delivery again, with a later ingest time, when its "published" mark was lost
    or a hospital re-sends it. If that send expires unread too, audit must get a second expiry: under
    the first one's id it kept only the first."""
    partner = make_name("p")
    topics = Topics(make_name("rw") + ".")
    feed = topics.partner(partner)
    _feed(kafka_bootstrap, feed, 2)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(feed, 0): 1})  # unread messages already lost
    finally:
        admin.close()
    delivered = DeliveredObjects(db)

    def send(ingested_at_ms: int, delivered_at_ms: int) -> DeliveredInstance:
        return DeliveredInstance(
            partner_id=partner, study_uid="2.25.1", series_uid="2.25.2", sop_uid="2.25.3.7", sop_class_uid="",
            transfer_syntax_uid="", sha256=f"{7:064x}", size=1, delivery_id="d7", source_study_uid="1.2.3",
            ingested_at_ms=ingested_at_ms, delivered_at_ms=delivered_at_ms,
        )  # fmt: skip

    def expiries(now: int) -> list[str]:
        published: list[OutgoingMessage] = []
        _watch(kafka_bootstrap, partner, topics, delivered, published, now).check()
        return [events_pb2.DeliveryOutcome.FromString(m.value).meta.event_id for m in published]

    delivered.record([send(ingested_at_ms=1 * HOUR_MS, delivered_at_ms=1 * HOUR_MS)])
    first = expiries(now=12 * HOUR_MS)
    delivered.record([send(ingested_at_ms=20 * HOUR_MS, delivered_at_ms=20 * HOUR_MS)])
    assert [i.resent for i in delivered.unstored()] == [True], "owed again, as a send of its own"
    second = expiries(now=31 * HOUR_MS)
    assert len(first) == 1 and len(second) == 1
    assert second != first
    assert expiries(now=32 * HOUR_MS) == [], "each send declared once"


def test_an_original_sent_again_after_its_correction_is_a_send_of_its_own(
    db: Database, make_name: Callable[[str], str]
) -> None:
    """Delivery ids are content-addressed: the original, its correction, then the original again (a
    hospital re-sending it) is recorded over the correction with the original's id, and must not expire
    under the id its first send's expiry had."""
    partner = make_name("p")
    delivered = DeliveredObjects(db)

    def send(delivery_id: str, sha: int, at_ms: int) -> DeliveredInstance:
        return DeliveredInstance(
            partner_id=partner, study_uid="2.25.1", series_uid="2.25.2", sop_uid="2.25.3.8", sop_class_uid="",
            transfer_syntax_uid="", sha256=f"{sha:064x}", size=1, delivery_id=delivery_id,
            ingested_at_ms=at_ms, delivered_at_ms=at_ms,
        )  # fmt: skip

    delivered.record([send("d-original", 1, 1 * HOUR_MS)])
    assert [i.resent for i in delivered.unstored()] == [False]
    delivered.record([send("d-corrected", 2, 2 * HOUR_MS)])
    delivered.record([send("d-original", 1, 3 * HOUR_MS)])
    assert [(i.delivery_id, i.resent) for i in delivered.unstored()] == [("d-original", True)]

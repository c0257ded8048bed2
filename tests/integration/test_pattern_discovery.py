"""Delivery and audit subscribe to every partner's receipts by pattern and refresh their view of the
broker's topics only every `partner_topic_discovery_s` (each look reads every topic's metadata). A new
partner is read at once all the same: delivery looks when it has created the partner's topics, audit
when it records its first delivery to the partner."""

from __future__ import annotations

import time

import pytest
from pymongo.database import Database

from services.audit.consumer import AuditHandler
from services.audit.queries import EventFilter
from services.audit.receipts_watch import ReceiptsWatch
from services.audit.records import subscription_pattern
from services.audit.store import MongoAuditStore
from services.common.bus import BusProducer, Handler, StageConsumer, ensure_topics
from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.delivery.handler import delivery_pattern
from services.delivery.main import PartnerTopics
from services.delivery.settings import DeliverySettings
from tests.integration.bus_helpers import TopicsRead, poll_until_joined, poll_until_read, stage_consumer
from tests.unit.audit.builders import Instance, journey

pytestmark = pytest.mark.integration

NEVER_S = 300  # the longest look interval the settings allow: no scheduled look comes within the test


def rarely_looking(bootstrap: str, producer: BusProducer, topics: Topics, stage: str, pattern: str) -> StageConsumer:
    """`stage`'s pattern consumer, whose next scheduled look for new topics is minutes away."""
    return stage_consumer(
        bootstrap,
        producer,
        (),
        f"{topics.prefix}{stage}",
        topics.dead_letter,
        stage=stage,
        pattern=pattern,
        poll_timeout_ms=300,
        metadata_max_age_ms=NEVER_S * 1000,
    )


def join_and_settle(consumer: StageConsumer, handler: Handler) -> None:
    poll_until_joined(consumer, handler)
    settled = time.monotonic() + 3  # the look a leader takes after assigning is over
    while time.monotonic() < settled:
        consumer.poll_once(handler)


def test_a_partner_added_by_delivery_is_read_at_once_though_the_next_look_is_minutes_away(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topics = Topics(prefix=unique_name + ".")
    settings = DeliverySettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topics.prefix)
    ensure_topics(kafka_bootstrap, [*topics.prepared_lanes, topics.receipts("first"), topics.dead_letter], 1)
    producer = BusProducer(kafka_bootstrap)
    handler = TopicsRead()
    consumer = rarely_looking(kafka_bootstrap, producer, topics, "delivery", delivery_pattern(topics))
    partner_topics = PartnerTopics(settings, topics)
    partner_topics.attach(consumer.look_for_new_topics)
    try:
        join_and_settle(consumer, handler)

        partner_topics.ensure("late")
        late = topics.receipts("late")
        producer.publish([OutgoingMessage(topic=late, key=b"study", value=b"receipt")])
        poll_until_read(consumer, handler, late, 30)  # one look and one rebalance; without the look, minutes

        # Another replica (or this one after a restart) finds the topics there: nothing new to look for.
        elsewhere, looks = PartnerTopics(settings, topics), list[str]()
        elsewhere.attach(lambda: looks.append("look"))
        elsewhere.ensure("late")
        assert looks == []
        assert ensure_topics(kafka_bootstrap, [late, topics.receipts("later")], 1) == [topics.receipts("later")]
    finally:
        consumer.close()
        producer.close()


def test_audit_reads_a_new_partners_receipts_once_it_records_a_delivery_to_it(
    kafka_bootstrap: str, unique_name: str, db: Database
) -> None:
    topics = Topics(prefix=unique_name + ".")
    ensure_topics(kafka_bootstrap, [*topics.pipeline(), topics.dead_letter], 1)
    producer = BusProducer(kafka_bootstrap)
    store = MongoAuditStore(db["audit_events"])
    store.ensure_indexes()
    watch = ReceiptsWatch(topics)
    handler = AuditHandler(store, topics, watch=watch.saw)
    consumer = rarely_looking(kafka_bootstrap, producer, topics, "audit", subscription_pattern(topics))
    watch.attach(consumer.subscribed_topics, consumer.look_for_new_topics)
    try:
        join_and_settle(consumer, handler)

        # As delivery does: the partner's topics first, then the outcome, then the gateway's receipt.
        ensure_topics(kafka_bootstrap, [topics.receipts("late")], 1)
        producer.publish(journey(topics, Instance(), partner="late"))
        deadline = time.monotonic() + 30  # one look and one rebalance; without the look, minutes
        while not store.events(EventFilter(event_type="receipt"), limit=1).records:
            assert time.monotonic() < deadline, "the new partner's receipt was not recorded"
            consumer.poll_once(handler)
    finally:
        consumer.close()
        producer.close()

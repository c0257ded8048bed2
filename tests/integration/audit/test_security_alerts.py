"""A partner's backlog nearing its feed's retention, end to end on real Kafka and FerretDB: delivery's
retention watch raises a SecurityAlert once per crossing of a warning fraction, and audit records it
as a DICOM PS3.15 A.5.3.11 Security Alert (110113) with the partner and the figures, nothing else."""

from __future__ import annotations

from collections.abc import Callable

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from pymongo.database import Database

from services.audit.consumer import AuditHandler
from services.audit.exports import audit_message_xml, fhir_audit_event
from services.audit.log_entries import unpacked
from services.audit.records import AuditRecord
from services.audit.standard_events import standard_event
from services.audit.store import MongoAuditStore, record_from_document
from services.common.bus import BusProducer, ensure_topics
from services.common.topics import Topics
from services.delivery.retention_watch import KafkaBacklogReader, RetentionWatch
from tests.integration.audit.helpers import audit_consumer, poll_until

HOUR_MS = 3600 * 1000
RETENTION_MS = 10 * HOUR_MS


def _feed_with_unread_messages(kafka_bootstrap: str, topics: Topics, partner: str) -> int:
    """The partner's feed (retention 10 h) with three messages nobody read; their broker timestamp."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(t, 1, 1, topic_configs={"retention.ms": str(RETENTION_MS)})
                for t in topics.partner_lanes(partner)
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    sent = [producer.send(topics.partner(partner), f"delivery-{n}".encode(), partition=0) for n in range(3)]
    first = sent[0].get(timeout=10).timestamp
    producer.flush()
    producer.close()
    return int(first)


def test_a_backlog_crossing_a_warning_fraction_is_recorded_by_audit_as_a_security_alert_once(
    kafka_bootstrap: str, db: Database, make_name: Callable[[str], str]
) -> None:
    topics = Topics(make_name("alerts") + ".")
    partner = make_name("p").replace("t-", "lab-")
    ensure_topics(kafka_bootstrap, topics.pipeline(), 1)
    sent_at = _feed_with_unread_messages(kafka_bootstrap, topics, partner)
    producer = BusProducer(kafka_bootstrap)
    clock = [sent_at]

    def watch() -> RetentionWatch:
        """Delivery's watch as delivery/main.py wires it: alerts go out through its producer."""
        return RetentionWatch(
            partners=lambda: [partner],
            feed_topics=topics.partner_lanes,
            read_lag=KafkaBacklogReader(kafka_bootstrap, topic_prefix=topics.prefix).partner_lag,
            unstored=lambda: [],
            mark_expired=lambda items, at: None,
            publish=producer.publish,
            topics=topics,
            clock=lambda: clock[0],
        )

    replica = watch()
    for hours in (1, 6, 6.5, 9, 9.5):  # 10%, 60% (crosses 0.5), 65%, 90% (crosses 0.8), 95%
        clock[0] = sent_at + int(hours * HOUR_MS)
        replica.check()
    watch().check()  # another replica (or this one restarted) raises the 0.8 crossing again: same id

    collection = db["audit_events"]
    store = MongoAuditStore(collection)
    store.ensure_indexes()
    consumer = audit_consumer(kafka_bootstrap, topics, producer, max_batch=50)
    handler = AuditHandler(store, topics)
    try:
        poll_until(consumer, handler, lambda: collection.count_documents({"_id": {"$regex": "^alert:"}}) >= 2, 60)
        for _ in range(10):  # the replica's duplicate is read and dropped
            consumer.poll_once(handler)
    finally:
        consumer.close()
        producer.close()

    # As the store keeps them: packed (log_entries.unpacked), empty fields left out.
    stored = map(unpacked, collection.find({"_id": {"$regex": "^alert:"}}))
    records: list[AuditRecord] = sorted(map(record_from_document, stored), key=lambda r: r["occurred_at"])
    assert [r["detail"].split()[0] for r in records] == ["threshold=0.5", "threshold=0.8"], "once per crossing"
    first, second = records
    assert first["topic"] == topics.alerts
    assert (second["partner_id"], second["stage"], second["status"], second["reason"]) == (
        partner,
        "delivery",
        "warning",
        "partner-backlog-retention",
    )
    figures = dict(item.split("=") for item in second["detail"].split())
    assert figures["unread"] == "3" and figures["expired"] == "0"
    assert figures["retention_ms"] == str(RETENTION_MS)
    assert 0.8 <= float(figures["retention_used"]) < 1.0
    # Nothing about any study or patient: the alert names the partner and counts only.
    assert not any(second[f] for f in ("study_uid", "sop_uid", "delivered_study_uid", "source_org", "route_id"))

    event = standard_event(second)
    assert (event.event_id.code, event.event_id.display) == ("110113", "Security Alert")
    assert event.action == "E" and event.outcome == 0, "informative: nothing is lost yet"
    assert [c.code for c in event.type_codes] == ["partner-backlog-retention"]
    assert [(p.user_id, p.requestor) for p in event.participants] == [("imx-delivery", True), (partner, False)]
    xml = audit_message_xml(second)
    assert 'csd-code="110113"' in xml and partner in xml and "threshold=0.8" in xml
    fhir = fhir_audit_event(second)
    assert fhir["type"]["code"] == "110113"

"""What a partner receives on its feed, and what happens when it cannot."""

from __future__ import annotations

from services.common.events import EVENT_TYPE_HEADER
from services.common.messages import IncomingMessage
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, StoredReceipt
from services.delivery.handler import DeliveryHandler, deliver_event, delivery_pattern
from services.delivery.retention_watch import expired_outcome
from services.delivery.retrieval_refs import RetrievalRefs
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.event_refs import blob_ref, instance_ref

BASE = "https://imx.example.org/dicomweb"
GIB = 1024**3


def _prepared(size: int = 3, priority: int = events_pb2.PRIORITY_CLASS_URGENT) -> events_pb2.InstancePrepared:
    return events_pb2.InstancePrepared(
        meta=events_pb2.EventMeta(event_id="p1", ingested_at_ms=7),
        source_instance=instance_ref(),
        instance=instance_ref("2.25.9", "2.25.11", "2.25.10", modality=""),
        blob=blob_ref("aa", size),
        source_org="trust-a",
        partner_id="lab",
        route_id="research",
        profile="research",
        profile_version=4,
        deidentified=True,
        priority=priority,  # type: ignore[arg-type]
    )


def test_with_a_key_the_reference_is_signed_for_the_partner_path_and_object_and_replays_identically() -> None:
    refs = RetrievalRefs(b"k" * 32)
    (partner, _), delivery = deliver_event(_prepared(), True, Topics(), BASE, clock=lambda: 99, refs=refs)
    assert delivery is not None
    url, _, query = delivery.retrieval_url.partition("?ref=")
    assert url == f"{BASE}/studies/2.25.9/series/2.25.11/instances/2.25.10"
    signed = refs.verify(query, "lab", "2.25.9", "2.25.11", "2.25.10")
    assert signed is not None
    assert (signed.sha256, signed.size, signed.transfer_syntax_uid) == (
        delivery.blob.sha256,
        delivery.blob.size,
        delivery.instance.transfer_syntax_uid,
    )
    (again, _), _ = deliver_event(_prepared(), True, Topics(), BASE, clock=lambda: 99, refs=refs)
    assert again.value == partner.value, "a replay publishes the same bytes"


def test_the_partner_gets_a_reference_to_fetch_and_an_outcome_is_recorded() -> None:
    (partner, outcome), delivery = deliver_event(_prepared(), True, Topics(), BASE, clock=lambda: 99)
    assert partner.topic == "imx.partner.lab.urgent.v1", "an urgent instance goes on the feed's urgent lane"
    assert partner.key == b"2.25.9", "keyed by the delivered study UID, never the original"
    assert partner.headers[EVENT_TYPE_HEADER] == b"PartnerDelivery"
    sent = events_pb2.PartnerDelivery.FromString(partner.value)
    assert sent == delivery
    assert sent.retrieval_url == f"{BASE}/studies/2.25.9/series/2.25.11/instances/2.25.10"
    assert (sent.blob.sha256, sent.blob.size, sent.route_id, sent.profile, sent.profile_version) == (
        "a" * 64,
        3,
        "research",
        "research",
        4,
    )
    assert sent.priority == events_pb2.PRIORITY_CLASS_URGENT
    assert sent.instance.sop_class_uid and sent.instance.transfer_syntax_uid
    assert sent.meta.event_id and sent.meta.ingested_at_ms == 7
    assert b"1.2.3.4" not in partner.value, "the original UIDs never reach the partner"
    result = events_pb2.DeliveryOutcome.FromString(outcome.value)
    assert (outcome.topic, result.status, result.topic) == (
        "imx.outcomes.v1",
        events_pb2.DELIVERY_STATUS_DELIVERED,
        "imx.partner.lab.urgent.v1",
    )


def test_each_priority_class_has_its_lane_on_the_feed_and_unset_is_routine() -> None:
    lanes = {
        events_pb2.PRIORITY_CLASS_URGENT: "imx.partner.lab.urgent.v1",
        events_pb2.PRIORITY_CLASS_ROUTINE: "imx.partner.lab.v1",
        events_pb2.PRIORITY_CLASS_UNSPECIFIED: "imx.partner.lab.v1",
        events_pb2.PRIORITY_CLASS_BULK: "imx.partner.lab.bulk.v1",
    }
    for priority, topic in lanes.items():
        (partner, _), _ = deliver_event(_prepared(priority=priority), True, Topics(), BASE)
        assert partner.topic == topic


def test_a_feed_message_is_small_whatever_the_size_of_the_instance() -> None:
    (partner, _), _ = deliver_event(_prepared(size=GIB), True, Topics(), BASE)
    assert len(partner.value) < 1024
    assert events_pb2.PartnerDelivery.FromString(partner.value).blob.size == GIB


def test_a_replay_gives_the_same_delivery_id() -> None:
    _, first = deliver_event(_prepared(), True, Topics(), BASE, clock=lambda: 1)
    _, again = deliver_event(_prepared(), True, Topics(), BASE, clock=lambda: 2)
    assert first is not None and again is not None
    assert first.meta.event_id == again.meta.event_id


def test_an_unknown_partner_fails_and_is_quarantined() -> None:
    (quarantine, outcome), delivery = deliver_event(_prepared(), False, Topics(), BASE)
    assert delivery is None
    assert events_pb2.Quarantined.FromString(quarantine.value).reason == "unknown-partner"
    assert events_pb2.DeliveryOutcome.FromString(outcome.value).status == events_pb2.DELIVERY_STATUS_FAILED


def test_the_handler_records_what_each_partner_was_sent_once_per_batch() -> None:
    recorded: list[list[DeliveredInstance]] = []
    handler = DeliveryHandler(lambda p: p == "lab", Topics(), lambda p: None, recorded.append, BASE)

    def message(prepared: events_pb2.InstancePrepared) -> IncomingMessage:
        return IncomingMessage("imx.prepared.v1", 0, 0, None, prepared.SerializeToString())

    handler(message(_prepared()))
    unknown = _prepared()
    unknown.partner_id = "gone"
    handler(message(unknown))
    assert recorded == [], "nothing is written before the batch's flush"
    handler.flush()
    handler.flush()
    assert len(recorded) == 1 and len(recorded[0]) == 1
    item = recorded[0][0]
    assert (item.partner_id, item.study_uid, item.series_uid, item.sop_uid, item.sha256, item.size) == (
        "lab",
        "2.25.9",
        "2.25.11",
        "2.25.10",
        "a" * 64,
        3,
    )


def test_what_is_recorded_of_a_delivery_names_the_instance_as_received_so_a_later_expiry_reaches_its_trail() -> None:
    recorded: list[list[DeliveredInstance]] = []
    handler = DeliveryHandler(lambda p: p == "lab", Topics(), lambda p: None, recorded.append, BASE)
    deidentified = _prepared()
    deidentified.source_blob.CopyFrom(blob_ref("bb", 5))
    as_sent = _prepared()
    as_sent.instance.CopyFrom(as_sent.source_instance)  # a pass-through route: the UIDs are the sender's
    as_sent.blob.CopyFrom(blob_ref("cc", 3))
    as_sent.source_blob.CopyFrom(as_sent.blob)
    for prepared in (deidentified, as_sent):
        handler(IncomingMessage("imx.prepared.v1", 0, 0, None, prepared.SerializeToString()))
    handler.flush()
    copy, same = recorded[0]
    assert (copy.source_study_uid, copy.source_sop_uid, copy.source_org, copy.source_sha256) == (
        "1.2.3",
        "1.2.3.4.5",
        "trust-a",
        "bb" * 32,
    )
    assert (same.source_study_uid, same.source_sop_uid, same.source_org, same.source_sha256) == ("", "", "trust-a", "")

    # The retention watch's outcome when the copy expires unread: about the study the sender sent, from them.
    outcome_message = expired_outcome(copy, Topics(), clock=lambda: 1)
    outcome = events_pb2.DeliveryOutcome.FromString(outcome_message.value)
    assert outcome_message.key == b"1.2.3"
    assert (outcome.source_instance.study_instance_uid, outcome.source_instance.sop_instance_uid) == (
        "1.2.3",
        "1.2.3.4.5",
    )
    assert (outcome.instance.study_instance_uid, outcome.source_org) == ("2.25.9", "trust-a")
    passed_through = events_pb2.DeliveryOutcome.FromString(expired_outcome(same, Topics(), clock=lambda: 1).value)
    assert passed_through.source_instance.study_instance_uid == "1.2.3" and passed_through.source_org == "trust-a"


def test_a_receipt_marks_the_delivery_stored_for_the_partner_that_owns_the_topic() -> None:
    marked: list[list[StoredReceipt]] = []
    topics = Topics()
    handler = DeliveryHandler(lambda p: True, topics, lambda p: None, lambda items: None, BASE, mark=marked.append)
    instance = _prepared().instance
    stored = events_pb2.DeliveryReceipt(
        meta=events_pb2.EventMeta(event_id="r1", occurred_at_ms=5, ingested_at_ms=3),
        instance=instance,
        status=events_pb2.STORE_STATUS_STORED,
        stored_at_ms=42,
    )
    retrying = events_pb2.DeliveryReceipt(instance=instance, status=events_pb2.STORE_STATUS_FAILED)
    for receipt in (stored, retrying):
        assert handler(IncomingMessage(topics.receipts("lab"), 0, 0, None, receipt.SerializeToString())) == []
    handler.flush()
    # The send reported on (its ingest time) goes with it: a receipt of an earlier send marks nothing.
    assert marked == [[StoredReceipt("lab", "2.25.9", "2.25.11", "2.25.10", "stored", 42, ingested_at_ms=3)]]


def test_the_stage_reads_prepared_instances_and_every_partners_receipts_only() -> None:
    import re

    pattern = re.compile(delivery_pattern(Topics("t.")))
    for lane in ("t.imx.prepared.v1", "t.imx.prepared.urgent.v1", "t.imx.prepared.bulk.v1"):
        assert pattern.match(lane), lane
    assert pattern.match("t.imx.receipts.lab-2.v1")
    for other in ("t.imx.partner.lab.v1", "imx.prepared.v1", "t.imx.outcomes.v1", "t.imx.receipts.A.v1"):
        assert not pattern.match(other), other


def test_receipts_and_prepared_instances_interleaved_are_each_read_as_what_their_topic_carries() -> None:
    marked: list[list[StoredReceipt]] = []
    recorded: list[list[DeliveredInstance]] = []
    topics = Topics()
    handler = DeliveryHandler(lambda p: True, topics, lambda p: None, recorded.append, BASE, mark=marked.append)
    prepared = _prepared()
    receipt = events_pb2.DeliveryReceipt(
        instance=prepared.instance, status=events_pb2.STORE_STATUS_STORED, stored_at_ms=42
    ).SerializeToString()
    for topic in (topics.receipts("lab"), topics.prepared, topics.receipts("clinic-2"), topics.receipts("lab")):
        value = prepared.SerializeToString() if topic == topics.prepared else receipt
        handler(IncomingMessage(topic, 0, 0, None, value))
    handler.flush()
    assert [r.partner_id for r in marked[0]] == ["lab", "clinic-2", "lab"], "each receipt is its topic owner's"
    assert [i.partner_id for i in recorded[0]] == ["lab"]

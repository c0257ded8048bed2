"""Every event kind becomes one audit record with the trail's fields, and nothing more."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from services.audit.records import (
    RECORD_FIELDS,
    EventType,
    build_record,
    event_type_for,
    subscription_pattern,
    to_datetime,
)
from services.common.events import EVENT_TYPE_HEADER
from services.common.messages import IncomingMessage, OutgoingMessage, PermanentError
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2 as pb
from tests.unit.audit.builders import PHI_DESCRIPTION, T0_MS, Instance, dead_letter, incoming, journey, quarantined

TOPICS = Topics("t-x.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
INSTANCE = Instance()


def _records(deidentified: bool = True) -> list[dict]:
    return [dict(build_record(incoming(m), TOPICS, NOW)) for m in journey(TOPICS, INSTANCE, deidentified=deidentified)]


def test_each_hop_is_typed_by_its_topic_and_keyed_by_type_and_event_id() -> None:
    records = _records()
    assert [r["event_type"] for r in records] == ["ingested", "routed", "prepared", "outcome", "receipt"]
    for r in records[:-1]:
        assert r["_id"] == f"{r['event_type']}:{r['event_id']}"
    assert records[-1]["_id"] == f"receipt:research-a:{records[-1]['event_id']}"  # the partner's topic's
    for r in records:
        assert set(r) == set(RECORD_FIELDS)
    assert [r["occurred_at"] for r in records] == [to_datetime(T0_MS + 10 * i) for i in range(5)]
    assert all(r["ingested_at"] == to_datetime(T0_MS) and r["recorded_at"] == NOW for r in records)
    assert records[1]["causation_id"] == records[0]["event_id"]


def test_ingested_records_who_sent_it_and_how() -> None:
    ingested = _records()[0]
    assert (ingested["source_org"], ingested["channel"]) == ("trust-a", "c-store")
    assert (ingested["study_uid"], ingested["series_uid"], ingested["sop_uid"]) == (
        INSTANCE.study,
        INSTANCE.series,
        INSTANCE.sop,
    )
    assert ingested["causation_id"] is None


def test_routed_and_prepared_record_route_partner_and_profile_version() -> None:
    _, routed, prepared, _, _ = _records()
    assert (routed["route_id"], routed["partner_id"], routed["profile"], routed["profile_version"]) == (
        "route-1",
        "research-a",
        "research-basic",
        3,
    )
    assert prepared["deidentified"] is True
    assert prepared["sop_uid"] == INSTANCE.sop, "the UID as received"
    assert prepared["delivered_sop_uid"] == INSTANCE.remapped().sop
    assert prepared["delivered_study_uid"] == INSTANCE.remapped().study


def test_pass_through_has_no_profile_and_no_delivered_uids() -> None:
    _, routed, prepared, outcome, receipt = _records(deidentified=False)
    assert routed["profile"] is None and routed["profile_version"] is None
    assert prepared["deidentified"] is False and prepared["delivered_sop_uid"] is None
    assert outcome["delivered_sop_uid"] is None
    assert receipt["delivered_study_uid"] == INSTANCE.study, "a pass-through copy keeps its UIDs"


def test_a_receipt_of_a_deidentified_copy_knows_only_the_remapped_uids() -> None:
    receipt = _records()[4]
    assert (receipt["partner_id"], receipt["status"], receipt["stage"]) == ("research-a", "stored", "gateway")
    assert receipt["study_uid"] is None and receipt["sop_uid"] is None
    assert receipt["delivered_sop_uid"] == INSTANCE.remapped().sop
    assert receipt["ingested_at"] == to_datetime(T0_MS), "kept for the turnaround"


def test_a_receipt_belongs_to_the_partner_whose_topic_it_is_on() -> None:
    message = journey(TOPICS, INSTANCE, partner="research-a")[4]
    moved = IncomingMessage(TOPICS.receipts("ai-b"), 0, 0, message.key, message.value, dict(message.headers))
    assert build_record(moved, TOPICS, NOW)["partner_id"] == "ai-b"


def test_partner_feeds_are_not_read_by_audit() -> None:
    assert event_type_for(TOPICS.partner("research-a"), {}, TOPICS) is None


def test_a_retrieval_records_who_fetched_what() -> None:
    event = pb.PartnerRetrieval(
        meta=pb.EventMeta(event_id="r1", occurred_at_ms=T0_MS),
        partner_id="research-a",
        action="instance",
        study_instance_uid="2.25.1",
        series_instance_uid="2.25.2",
        sop_instance_uid="2.25.3",
        instances=1,
        bytes=527_000,
        http_status=200,
    )
    record = build_record(IncomingMessage(TOPICS.access, 0, 0, None, event.SerializeToString()), TOPICS, NOW)
    assert (record["event_type"], record["partner_id"], record["reason"], record["status"]) == (
        "retrieval",
        "research-a",
        "instance",
        "200",
    )
    assert record["delivered_sop_uid"] == "2.25.3"


def test_outcome_and_receipt_record_status_and_detail() -> None:
    failed = journey(TOPICS, INSTANCE, delivered=False)
    outcome = build_record(incoming(failed[3]), TOPICS, NOW)
    assert (outcome["status"], outcome["detail"], outcome["partner_id"]) == (
        "failed",
        "partner-unreachable",
        "research-a",
    )
    receipt = build_record(incoming(failed[4]), TOPICS, NOW)
    assert (receipt["status"], receipt["detail"]) == ("failed", "0xA700")
    assert _records()[3]["status"] == "delivered"


def test_quarantine_records_stage_and_reason() -> None:
    record = build_record(incoming(quarantined(TOPICS, INSTANCE, T0_MS + 5)), TOPICS, NOW)
    assert record["event_type"] == EventType.QUARANTINED
    assert (record["stage"], record["reason"], record["detail"], record["status"]) == (
        "routing",
        "no-route",
        "rules=0",
        "quarantined",
    )
    assert record["study_uid"] == INSTANCE.study


def test_no_routing_attributes_no_dicom_bytes_and_no_fetch_url_in_any_record() -> None:
    rendered = repr(_records() + _records(deidentified=False))
    assert PHI_DESCRIPTION not in rendered
    assert "PATIENT^SECRET" not in rendered and "DICM" not in rendered
    assert "routing_attributes" not in rendered and "fetch_url" not in rendered
    assert all(not isinstance(v, bytes) for r in _records() for v in r.values())


def test_a_dead_letter_records_where_it_came_from_and_why_but_not_its_value() -> None:
    routed = journey(TOPICS, INSTANCE)[1]
    letter = build_record(incoming(dead_letter(TOPICS, routed), offset=3, timestamp_ms=T0_MS + 99), TOPICS, NOW)
    assert letter["event_type"] == EventType.DEAD_LETTER, "the topic wins over the copied imx-event-type header"
    assert letter["source"] == {"topic": TOPICS.routed, "partition": 1, "offset": 7, "event_type": "routed"}
    assert (letter["stage"], letter["reason"], letter["status"]) == ("deid", "PermanentError", "dead-lettered")
    assert letter["detail"] == "PermanentError: tag (0008,0016) missing"
    assert letter["study_uid"] == INSTANCE.study, "identifiers are borrowed from the original when readable"
    assert letter["partner_id"] == "research-a"
    assert letter["causation_id"] == build_record(incoming(routed), TOPICS, NOW)["event_id"]
    assert letter["occurred_at"] == to_datetime(T0_MS + 99)
    assert routed.value not in repr(letter).encode()


def test_the_same_dead_letter_read_twice_gives_the_same_id() -> None:
    letter = dead_letter(TOPICS, journey(TOPICS, INSTANCE)[1])
    first = build_record(incoming(letter, offset=1), TOPICS, NOW)
    again = build_record(incoming(letter, offset=2), TOPICS, datetime(2027, 1, 1, tzinfo=UTC))
    assert first["_id"] == again["_id"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"imx-source-topic": b"\xff\xfe", "imx-source-offset": b"x"},
        {"imx-source-topic": b"t-x.imx.routed.v1", "imx-source-partition": b"0", "imx-source-offset": b"1"},
    ],
)
def test_any_dead_letter_is_recorded_even_garbage(headers: dict[str, bytes]) -> None:
    message = IncomingMessage(TOPICS.dead_letter, 0, 5, None, b"\xff not protobuf \x00", headers)
    record = build_record(message, TOPICS, NOW)
    assert record["event_type"] == EventType.DEAD_LETTER
    assert record["occurred_at"] == NOW, "no broker timestamp: the time it was recorded"


def test_an_undecodable_event_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError):
        build_record(IncomingMessage(TOPICS.routed, 0, 0, None, b"\xff\xff\xff garbage"), TOPICS, NOW)


def test_an_event_without_id_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError):
        build_record(IncomingMessage(TOPICS.routed, 0, 0, None, b""), TOPICS, NOW)


def test_unknown_topics_fall_back_to_the_event_type_header() -> None:
    assert event_type_for("other", {EVENT_TYPE_HEADER: b"DeliveryOutcome"}, TOPICS) == EventType.OUTCOME
    assert event_type_for("other", {}, TOPICS) is None
    with pytest.raises(PermanentError):
        build_record(IncomingMessage("other", 0, 0, None, b""), TOPICS, NOW)


def test_the_subscription_covers_pipeline_and_receipts_topics_of_this_prefix_only() -> None:
    pattern = re.compile(subscription_pattern(TOPICS))
    for topic in [*TOPICS.pipeline(), TOPICS.receipts("research-a"), TOPICS.receipts("p-2")]:
        assert pattern.match(topic), topic
    for topic in [
        "imx.ingested.v1",
        "t-y.imx.routed.v1",
        "t-x.imx.ingested.v2",
        "t-x.imx.receipts.A.v1",
        "t-x.imx.partner.research-a.v1",
        "t-xximx.routed.v1",
        "t-x.imx.routed.v1.extra",
        "__consumer_offsets",
    ]:
        assert not pattern.match(topic), topic
    assert re.compile(subscription_pattern(Topics())).match("imx.receipts.ai-1.v1")


def test_every_priority_lane_of_a_pipeline_topic_has_its_event_type() -> None:
    for topic in TOPICS.routed_lanes:
        assert event_type_for(topic, {}, TOPICS) == EventType.ROUTED, topic
    for topic in TOPICS.prepared_lanes:
        assert event_type_for(topic, {}, TOPICS) == EventType.PREPARED, topic


def _receipt(stored_at_ms: int, ingested_at_ms: int = T0_MS, occurred_at_ms: int = 0, detail: str = "") -> dict:
    event = pb.DeliveryReceipt(
        meta=pb.EventMeta(event_id="r1", occurred_at_ms=occurred_at_ms, ingested_at_ms=ingested_at_ms),
        instance=INSTANCE.ref(),
        status=pb.STORE_STATUS_STORED,
        stored_at_ms=stored_at_ms,
        detail=detail,
    )
    message = IncomingMessage(
        TOPICS.receipts("research-a"), 0, 0, b"k", event.SerializeToString(), {}, timestamp_ms=stored_at_ms
    )
    return dict(build_record(message, TOPICS, NOW))


@pytest.mark.parametrize(
    "claimed_ms",
    [
        253_402_300_799_000,  # 9999-12-31: the trail's last day moved there, every undated view 500
        2**62,  # beyond any date: OverflowError, retried for ever
        31_536_000_000,  # 1971: retention walked 55 years of days to reach the present
        int((NOW.timestamp() + 3600) * 1000),  # an hour ahead of audit's clock
    ],
)
def test_a_receipts_time_out_of_range_is_the_partners_claim_and_audit_records_its_own(claimed_ms: int) -> None:
    """A partner's gateway writes its receipts topic: its times are claims, kept within a window."""
    record = _receipt(claimed_ms, ingested_at_ms=claimed_ms)
    assert record["occurred_at"] == NOW
    assert record["ingested_at"] is None, "nor its turnaround"
    assert "out of range" in record["detail"]


def test_a_receipts_time_in_range_is_kept_as_sent() -> None:
    stored = int(NOW.timestamp() * 1000) - 3_600_000
    record = _receipt(stored, ingested_at_ms=stored - 5_000)
    assert record["occurred_at"] == to_datetime(stored)
    assert record["ingested_at"] == to_datetime(stored - 5_000)
    assert record["detail"] is None
    # Ingested after it was stored is a claim no delivery makes.
    assert _receipt(stored, ingested_at_ms=stored + 5_000)["ingested_at"] is None
    # A believable ingestion time with a stored time that is not: no turnaround up to audit's reading.
    assert _receipt(253_402_300_799_000, ingested_at_ms=stored)["ingested_at"] is None


def test_an_event_time_beyond_any_date_is_not_an_error() -> None:
    """imx's own events: a time a datetime cannot hold raised OverflowError, which no retry mends."""
    message = journey(TOPICS, INSTANCE)[0]
    event = pb.InstanceIngested.FromString(message.value)
    event.meta.occurred_at_ms = 2**62
    changed = OutgoingMessage(message.topic, event.SerializeToString(), message.key, message.headers)
    record = build_record(incoming(changed, timestamp_ms=T0_MS), TOPICS, NOW)
    assert record["occurred_at"] == to_datetime(T0_MS)


def test_a_receipt_is_keyed_by_the_partner_whose_topic_it_came_from() -> None:
    """One partner publishing another's receipt id first (computable from a study both received) had the
    genuine receipt dropped as a replay of it."""
    event = pb.DeliveryReceipt(
        meta=pb.EventMeta(event_id="same"), instance=INSTANCE.ref(), status=pb.STORE_STATUS_STORED
    )
    ids = {
        build_record(IncomingMessage(TOPICS.receipts(p), 0, 0, b"k", event.SerializeToString()), TOPICS, NOW)["_id"]
        for p in ("hospital-a", "hospital-b")
    }
    assert ids == {"receipt:hospital-a:same", "receipt:hospital-b:same"}


@pytest.mark.parametrize("detail", ["² of 3 missing", "99999999999 of 3 missing", "nonsense"])
def test_a_partners_odd_study_receipt_text_does_not_break_the_trail(detail: str) -> None:
    """The missing count is read from the receipt's detail, the partner's text: "²" (a digit to isdigit,
    not to int) made the study's trail a 500, a count past int32 its status call fail."""
    from services.audit.status import status_reply
    from services.audit.trail import build_trail

    receipt = pb.DeliveryReceipt(
        meta=pb.EventMeta(event_id="x1", occurred_at_ms=T0_MS + 100),
        instance=pb.InstanceRef(study_instance_uid=INSTANCE.study),
        status=pb.STORE_STATUS_STUDY_INCOMPLETE,
        detail=detail,
    )
    message = IncomingMessage(TOPICS.receipts("research-a"), 0, 9, b"k", receipt.SerializeToString())
    records = [*map(dict, _records()), dict(build_record(message, TOPICS, NOW))]
    trail = build_trail(INSTANCE.study, records)
    assert trail is not None
    status_reply(INSTANCE.study, trail)


def test_a_send_the_gateway_superseded_is_recorded_as_such_not_as_a_store() -> None:
    """The partner holds a newer send of the instance: no turnaround, no "stored" in the trail."""
    stored = int(NOW.timestamp() * 1000) - 3_600_000
    assert _receipt(stored, ingested_at_ms=stored - 5_000, detail="superseded")["status"] == "superseded"
    assert _receipt(stored, ingested_at_ms=stored - 5_000, detail="0x0000")["status"] == "stored"

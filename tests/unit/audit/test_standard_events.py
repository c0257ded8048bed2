"""Each audit record maps to the PS3.15 A.5 audit event it stands for, with UIDs and no patient identity."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.audit.records import AuditRecord, build_record
from services.audit.standard_events import (
    DATA_EXPORT,
    DATA_IMPORT,
    DESTINATION_ROLE,
    INSTANCES_ACCESSED,
    INSTANCES_TRANSFERRED,
    NODE_AUTHENTICATION,
    QUERY,
    SECURITY_ALERT,
    SOURCE_ROLE,
    USER_AUTHENTICATION,
    standard_event,
)
from services.common.messages import IncomingMessage
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2 as pb
from tests.unit.audit.builders import PHI_DESCRIPTION, T0_MS, Instance, dead_letter, incoming, journey, quarantined

TOPICS = Topics("t-std.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
STUDY = Instance()


def journey_records(deidentified: bool = True, delivered: bool = True) -> list[AuditRecord]:
    messages = journey(TOPICS, STUDY, deidentified=deidentified, delivered=delivered)
    return [build_record(incoming(m), TOPICS, NOW) for m in messages]


def retrieval(action: str = "instance", http_status: int = 200) -> AuditRecord:
    event = pb.PartnerRetrieval(
        meta=pb.EventMeta(event_id=f"r-{action}-{http_status}", occurred_at_ms=T0_MS),
        partner_id="research-a",
        action=action,
        study_instance_uid="2.25.1",
        instances=1,
        http_status=http_status,
    )
    return build_record(IncomingMessage(TOPICS.access, 0, 0, None, event.SerializeToString()), TOPICS, NOW)


def test_a_journey_maps_to_import_access_and_transfer() -> None:
    events = [standard_event(r) for r in journey_records()]
    assert [(e.imx_event_type, e.event_id.code, e.action, e.outcome) for e in events] == [
        ("ingested", DATA_IMPORT.code, "C", 0),
        ("routed", INSTANCES_ACCESSED.code, "R", 0),
        ("prepared", INSTANCES_ACCESSED.code, "C", 0),
        ("outcome", INSTANCES_TRANSFERRED.code, "R", 0),
        ("receipt", INSTANCES_TRANSFERRED.code, "R", 0),
    ]
    assert all(e.event_id.system == "DCM" for e in events)


def test_import_names_the_sending_organisation_as_requesting_source() -> None:
    ingested = standard_event(journey_records()[0])
    sender, receiver = ingested.participants
    assert (sender.user_id, sender.requestor, sender.role) == ("trust-a", True, SOURCE_ROLE)
    assert (receiver.user_id, receiver.requestor, receiver.role) == ("imx-ingest", False, DESTINATION_ROLE)
    assert ingested.source_id == "imx-ingest"


def test_transfer_names_imx_as_source_and_the_partner_as_destination() -> None:
    outcome = standard_event(journey_records()[3])
    roles = {(p.user_id, p.role) for p in outcome.participants}
    assert roles == {("imx-delivery", SOURCE_ROLE), ("research-a", DESTINATION_ROLE)}


def test_study_objects_carry_the_received_and_the_deidentified_uid_only() -> None:
    outcome = standard_event(journey_records()[3])
    received, copy = outcome.objects
    assert received.study_uid == STUDY.study and copy.study_uid == STUDY.remapped().study
    assert (received.type_code, received.role, received.id_type.code) == (2, 3, "110180")
    assert copy.anonymized is True
    text = repr(outcome)
    assert PHI_DESCRIPTION not in text and "DOE" not in text


def test_a_failed_delivery_is_a_transfer_with_a_failure_outcome() -> None:
    records = journey_records(delivered=False)
    outcome, receipt = standard_event(records[3]), standard_event(records[4])
    assert (outcome.event_id, outcome.outcome) == (INSTANCES_TRANSFERRED, 4)
    assert receipt.outcome == 4 and "0xA700" in (receipt.outcome_description or "")


@pytest.mark.parametrize(
    ("action", "status", "event_id", "outcome"),
    [
        ("instance", 200, DATA_EXPORT, 0),
        ("study", 404, DATA_EXPORT, 4),
        ("query", 200, QUERY, 0),
        ("instance", 401, USER_AUTHENTICATION, 4),
        ("instance", 403, SECURITY_ALERT, 4),
        ("metadata", 500, DATA_EXPORT, 8),
    ],
)
def test_a_partners_retrieval_is_an_export_query_or_alert(
    action: str, status: int, event_id: object, outcome: int
) -> None:
    event = standard_event(retrieval(action, status))
    assert (event.event_id, event.outcome) == (event_id, outcome)
    partner = next(p for p in event.participants if p.user_id == "research-a")
    assert partner.requestor is True


def test_a_quarantine_is_the_stages_event_failed_or_a_security_alert() -> None:
    plain = standard_event(build_record(incoming(quarantined(TOPICS, STUDY, T0_MS)), TOPICS, NOW))
    assert (plain.event_id, plain.outcome) == (INSTANCES_ACCESSED, 8)
    alert_message = quarantined(TOPICS, STUDY, T0_MS, reason="unknown-calling-ae")
    alert = standard_event(build_record(incoming(alert_message), TOPICS, NOW))
    assert (alert.event_id, alert.type_codes, alert.outcome) == (SECURITY_ALERT, (NODE_AUTHENTICATION,), 8)


def test_a_dead_letter_is_a_major_failure_of_its_stage() -> None:
    letter = dead_letter(TOPICS, journey(TOPICS, STUDY)[2], stage="delivery")
    event = standard_event(build_record(incoming(letter), TOPICS, NOW))
    assert (event.event_id, event.outcome, event.source_id) == (INSTANCES_TRANSFERRED, 12, "imx-delivery")
    assert event.objects[0].study_uid == STUDY.study


def test_a_partners_backlog_alert_is_an_informative_security_alert_naming_the_partner() -> None:
    from services.audit.standard_events import PARTNER_BACKLOG_RETENTION

    event = pb.SecurityAlert(
        meta=pb.EventMeta(event_id="a-1", occurred_at_ms=T0_MS),
        kind="partner-backlog-retention",
        service="delivery",
        partner_id="research-a",
        threshold=0.8,
        retention_used=0.8125,
        unread=42,
        expired=0,
        retention_ms=604800000,
        oldest_unread_age_ms=491400000,
    )
    record = build_record(IncomingMessage(TOPICS.alerts, 0, 0, None, event.SerializeToString()), TOPICS, NOW)
    assert (record["_id"], record["partner_id"], record["stage"], record["reason"]) == (
        "alert:a-1",
        "research-a",
        "delivery",
        "partner-backlog-retention",
    )
    assert record["detail"] == (
        "threshold=0.8 retention_used=0.812 unread=42 expired=0 retention_ms=604800000 oldest_unread_age_ms=491400000"
    )
    alert = standard_event(record)
    assert (alert.event_id, alert.action, alert.outcome, alert.type_codes) == (
        SECURITY_ALERT,
        "E",
        0,
        (PARTNER_BACKLOG_RETENTION,),
    )
    assert PARTNER_BACKLOG_RETENTION.system.startswith("99"), "a private coding scheme (PS3.16 8.2)"
    assert [(p.user_id, p.requestor) for p in alert.participants] == [("imx-delivery", True), ("research-a", False)]
    assert alert.source_id == "imx-delivery" and alert.objects == ()

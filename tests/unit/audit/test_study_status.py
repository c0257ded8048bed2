"""Per-study status for each partner: the furthest state reached, the counts behind it, the reasons
instances stopped short, and completeness from the gateway's study receipts (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.audit.records import build_record
from services.audit.status import status_reply
from services.audit.trail import Progress, build_trail, furthest_state
from services.common.events import event_id, event_message
from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2 as pb
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey, meta

TOPICS = Topics("t-status.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
FIRST = Instance()
SECOND = Instance(sop=FIRST.sop[:-1] + "2")


@pytest.mark.parametrize(
    ("progress", "state"),
    [
        (Progress(routed=2), "routed"),
        (Progress(routed=2, prepared=1), "prepared"),
        (Progress(routed=2, quarantined=2), "quarantined"),
        (Progress(routed=2, prepared=1, quarantined=1), "prepared"),
        (Progress(routed=2, prepared=2, failed=2), "failed"),
        (Progress(routed=2, prepared=2, delivered=2), "delivered"),
        (Progress(routed=2, prepared=2, delivered=2, dead_lettered=2), "dead_lettered"),
        (Progress(routed=2, prepared=2, delivered=2, stored=1, dead_lettered=1), "stored"),
        (Progress(routed=2, prepared=2, delivered=2, stored=2, completeness="incomplete"), "stored"),
        (Progress(routed=2, prepared=2, delivered=2, stored=2, completeness="complete"), "complete"),
        (Progress(), "received"),
    ],
)
def test_the_furthest_state_reached(progress: Progress, state: str) -> None:
    assert furthest_state(progress) == state


def _study_receipt(partner: str, study: str, at_ms: int, missing: int = 0, count: int = 2) -> OutgoingMessage:
    status = pb.STORE_STATUS_STUDY_INCOMPLETE if missing else pb.STORE_STATUS_STUDY_COMPLETE
    receipt = pb.DeliveryReceipt(
        meta=pb.EventMeta(event_id=event_id("receipt", study, str(at_ms)), occurred_at_ms=at_ms),
        instance=pb.InstanceRef(study_instance_uid=study),
        status=status,
        target_kind="file",
        detail=f"{missing} of {count} missing" if missing else "",
        missing=missing,
    )
    return event_message(TOPICS.receipts(partner), receipt, study)


def _dead_lettered(instance: Instance, partner: str, at_ms: int) -> OutgoingMessage:
    """The journey of an instance whose gateway gave up (the PACS refused it for good)."""
    messages = journey(TOPICS, instance, partner=partner, t0_ms=at_ms)
    receipt = pb.DeliveryReceipt.FromString(messages[-1].value)
    receipt.meta.event_id = event_id("receipt", receipt.delivery_id, "dead-lettered")
    receipt.status = pb.STORE_STATUS_DEAD_LETTERED
    receipt.detail = "0xA900"
    receipt.stored_at_ms = 0
    return event_message(messages[-1].topic, receipt, instance.remapped().study)


def _status(messages: list[OutgoingMessage], uid: str = FIRST.study) -> dict[str, dict[str, object]]:
    records = [build_record(incoming(m), TOPICS, NOW) for m in messages]
    reply = status_reply(uid, build_trail(uid, records))
    assert reply.found
    return {
        p.partner_id: {
            "state": p.state,
            "counts": (p.routed, p.prepared, p.delivered, p.stored, p.quarantined, p.failed, p.dead_lettered),
            "completeness": (p.completeness, p.missing),
            "reasons": [(r.stage, r.reason, r.count) for r in p.reasons],
        }
        for p in reply.partners
    }


def test_a_study_stored_and_checked_complete_is_complete() -> None:
    status = _status(
        [
            *journey(TOPICS, FIRST),
            *journey(TOPICS, SECOND, t0_ms=T0_MS + 100),
            _study_receipt("research-a", FIRST.remapped().study, T0_MS + 5000),
        ]
    )
    assert status["research-a"] == {
        "state": "complete",
        "counts": (2, 2, 2, 2, 0, 0, 0),
        "completeness": ("complete", 0),
        "reasons": [],
    }


def test_the_last_check_wins_and_an_incomplete_study_says_how_many_are_missing() -> None:
    stored_one = journey(TOPICS, FIRST)
    study = FIRST.remapped().study
    complete_then_grown = [*stored_one, _study_receipt("research-a", study, T0_MS + 5000, count=1)]
    incomplete = _study_receipt("research-a", study, T0_MS + 9000, missing=1, count=2)
    status = _status([*complete_then_grown, incomplete])
    assert status["research-a"]["state"] == "stored"
    assert status["research-a"]["completeness"] == ("incomplete", 1)
    assert status["research-a"]["reasons"] == [("gateway", "study_incomplete", 1)]


def test_dead_letters_and_quarantines_stop_a_destination_with_their_reasons() -> None:
    refused = _dead_lettered(FIRST, "pacs-b", T0_MS)
    burned_in = journey(TOPICS, SECOND, partner="pacs-b", t0_ms=T0_MS + 100)[:2]  # ingested, routed
    quarantine = pb.Quarantined(
        meta=meta("quarantined", SECOND, T0_MS + 150, partner="pacs-b"),
        stage="deid",
        reason="burned-in-annotation",
        source_org="trust-a",
        partner_id="pacs-b",
        route_id="route-1",
        instance=SECOND.ref(),
    )
    messages = [
        *journey(TOPICS, FIRST, partner="pacs-b")[:-1],
        refused,
        *burned_in,
        event_message(TOPICS.quarantine, quarantine, SECOND.study),
    ]
    status = _status(messages)
    assert status["pacs-b"]["state"] == "dead_lettered"
    assert status["pacs-b"]["counts"] == (2, 1, 1, 0, 1, 0, 1)
    assert status["pacs-b"]["reasons"] == [("deid", "burned-in-annotation", 1), ("gateway", "0xA900", 1)]


def test_a_failed_delivery_names_its_reason_and_an_unknown_study_is_not_found() -> None:
    status = _status(journey(TOPICS, FIRST, partner="care-b", deidentified=False, delivered=False)[:-1])
    assert status["care-b"]["state"] == "failed"
    assert status["care-b"]["reasons"] == [("delivery", "partner-unreachable", 1)]
    assert not status_reply("1.2.3", build_trail("1.2.3", [])).found


def test_a_delivery_whose_feed_message_expired_unread_shows_failed_with_its_reason() -> None:
    """The retention watch's later failed outcome (expired-unread) was outweighed by the earlier delivered
    one: the study showed delivered, with no failure and no reason."""
    from services.audit.records import RECORD_FIELDS
    from services.audit.trail import _destinations

    def record(at: int, **fields: object) -> dict:
        r: dict = dict.fromkeys(RECORD_FIELDS)
        r.update(_id=str(at), occurred_at=datetime.fromtimestamp(at, UTC), partner_id="hosp-a", route_id="r1")
        r.update(sop_uid="1.2.3.4.5", **fields)
        return r

    records = [
        record(1, event_type="routed"),
        record(2, event_type="prepared"),
        record(3, event_type="outcome", status="delivered"),
        record(4, event_type="outcome", status="failed", detail="expired-unread"),
    ]
    [destination] = _destinations(records)  # type: ignore[arg-type]
    assert (destination.delivered, destination.failed, destination.state) == (0, 1, "failed")
    assert [(r.stage, r.reason) for r in destination.reasons] == [("delivery", "expired-unread")]
    delivered_again = [*records, record(5, event_type="outcome", status="delivered")]
    [destination] = _destinations(delivered_again)  # type: ignore[arg-type]
    assert (destination.delivered, destination.failed, destination.reasons) == (1, 0, [])

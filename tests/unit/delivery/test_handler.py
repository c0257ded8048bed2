"""What a partner receives, and what happens when it cannot."""

from __future__ import annotations

from services.common.topics import Topics
from services.delivery.handler import INLINE_LIMIT, deliver_event
from services.proto_gen.imx.v1 import events_pb2


def _prepared(size: int = 3) -> events_pb2.InstancePrepared:
    return events_pb2.InstancePrepared(
        meta=events_pb2.EventMeta(event_id="p1", ingested_at_ms=7),
        source_instance=events_pb2.InstanceRef(study_instance_uid="1.2.3", sop_instance_uid="1.2.3.4"),
        instance=events_pb2.InstanceRef(study_instance_uid="2.25.9", sop_instance_uid="2.25.10"),
        blob=events_pb2.BlobRef(sha256="a" * 64, size=size),
        source_org="trust-a",
        partner_id="lab",
        route_id="research",
        profile="research",
        deidentified=True,
    )


def test_the_partner_gets_the_instance_inline_and_an_outcome_is_recorded() -> None:
    partner, outcome = deliver_event(_prepared(), True, lambda sha: b"DCM", Topics())
    assert partner.topic == "imx.partner.lab.v1"
    assert partner.key == b"2.25.9", "keyed by the delivered study UID, never the original"
    delivery = events_pb2.PartnerDelivery.FromString(partner.value)
    assert (delivery.dicom, delivery.deidentified, delivery.instance.sop_instance_uid) == (b"DCM", True, "2.25.10")
    assert b"1.2.3" not in partner.value, "the original UIDs never reach the partner"
    result = events_pb2.DeliveryOutcome.FromString(outcome.value)
    assert (outcome.topic, result.status, result.topic) == (
        "imx.outcomes.v1",
        events_pb2.DELIVERY_STATUS_DELIVERED,
        "imx.partner.lab.v1",
    )


def test_an_unknown_partner_fails_and_is_quarantined() -> None:
    quarantine, outcome = deliver_event(_prepared(), False, lambda sha: b"", Topics())
    assert events_pb2.Quarantined.FromString(quarantine.value).reason == "unknown-partner"
    assert events_pb2.DeliveryOutcome.FromString(outcome.value).status == events_pb2.DELIVERY_STATUS_FAILED


def test_an_instance_too_large_to_carry_inline_is_not_delivered() -> None:
    def never(sha: str) -> bytes:
        raise AssertionError("the blob is not read")

    quarantine, outcome = deliver_event(_prepared(INLINE_LIMIT + 1), True, never, Topics())
    assert events_pb2.Quarantined.FromString(quarantine.value).reason == "exceeds-inline-limit"
    assert events_pb2.DeliveryOutcome.FromString(outcome.value).detail == "exceeds-inline-limit"

"""Receipts: deterministic ids, turnaround data carried from the delivery, study completeness."""

from __future__ import annotations

from services.common.events import event_id
from services.gateway.receipts import DEAD_LETTERED, STORED, instance_receipt, study_receipt
from services.proto_gen.imx.v1 import events_pb2


def _delivery() -> events_pb2.PartnerDelivery:
    return events_pb2.PartnerDelivery(
        meta=events_pb2.EventMeta(event_id="d1", ingested_at_ms=1000),
        instance=events_pb2.InstanceRef(study_instance_uid="1.2", sop_instance_uid="1.2.3"),
    )


def test_a_stored_receipt_has_a_deterministic_id_and_carries_the_ingest_time() -> None:
    first = instance_receipt(_delivery(), STORED, "dicom", 2, 5000, "0x0000", 5000)
    again = instance_receipt(_delivery(), STORED, "dicom", 1, 9000, "0x0000", 9000)
    assert first.meta.event_id == again.meta.event_id == event_id("receipt", "d1", "stored")
    assert (first.meta.ingested_at_ms, first.stored_at_ms, first.attempts) == (1000, 5000, 2)
    assert (first.delivery_id, first.instance.sop_instance_uid, first.target_kind) == ("d1", "1.2.3", "dicom")
    dead = instance_receipt(_delivery(), DEAD_LETTERED, "dicom", 3, 6000, "0xA700")
    assert dead.meta.event_id != first.meta.event_id and dead.detail == "0xA700"


def test_a_study_is_complete_only_when_nothing_is_missing() -> None:
    study = events_pb2.StudyComplete(
        meta=events_pb2.EventMeta(event_id="s1"),
        study_instance_uid="1.2",
        count=3,
        instances=[events_pb2.ManifestEntry(delivery_id=f"d{n}") for n in range(3)],
    )
    complete = study_receipt(study, 0, "file", 1)
    incomplete = study_receipt(study, 2, "file", 1)
    assert complete.status == events_pb2.STORE_STATUS_STUDY_COMPLETE and complete.missing == 0
    assert incomplete.status == events_pb2.STORE_STATUS_STUDY_INCOMPLETE
    assert (incomplete.missing, incomplete.detail, incomplete.delivery_id) == (2, "2 of 3 missing", "")

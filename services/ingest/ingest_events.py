"""The events ingest emits, built from facts (pure: no clock, no I/O). Its quarantine events are
built with every other stage's, in services/common/quarantine_events.py."""

from __future__ import annotations

from services.common.dicom.header import InstanceHeader
from services.common.events import event_id
from services.proto_gen.imx.v1 import events_pb2


def ingested_event_id(source_org: str, sop_instance_uid: str, sha256: str, requested_destination: str = "") -> str:
    """The same instance (same bytes) from the same organisation, for the same requested destination,
    always gets the same id: a resend is a duplicate. Sent again to another destination it is a new
    request (it was answered "duplicate" and never routed there). Without a destination the id is what it
    always was, so receipts written before still recognise resends."""
    if requested_destination:
        return event_id(source_org, sop_instance_uid, sha256, requested_destination)
    return event_id(source_org, sop_instance_uid, sha256)


def instance_ref(header: InstanceHeader) -> events_pb2.InstanceRef:
    return events_pb2.InstanceRef(
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        modality=header.modality,
    )


def instance_ingested(
    *,
    header: InstanceHeader,
    sha256: str,
    size: int,
    source_org: str,
    channel: str,
    requested_destination: str,
    event_id: str,
    received_at_ms: int,
) -> events_pb2.InstanceIngested:
    return events_pb2.InstanceIngested(
        meta=events_pb2.EventMeta(event_id=event_id, occurred_at_ms=received_at_ms, ingested_at_ms=received_at_ms),
        instance=instance_ref(header),
        blob=events_pb2.BlobRef(sha256=sha256, size=size),
        source_org=source_org,
        channel=channel,
        requested_destination=requested_destination,
        routing_attributes=dict(header.routing),
    )

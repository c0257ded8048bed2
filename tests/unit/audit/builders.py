"""Events of every kind as the stages publish them, for the audit tests (unit and integration)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from services.audit.records import AuditRecord, build_record
from services.common.bus import dead_letter_for
from services.common.events import event_id, event_message
from services.common.messages import IncomingMessage, OutgoingMessage, PermanentError
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2 as pb

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PHI_DESCRIPTION = "CT HEAD for DOE^JANE 1970-01-01"


@dataclass(frozen=True)
class Instance:
    study: str = "1.2.826.0.1.3680043.10.1.1"
    series: str = "1.2.826.0.1.3680043.10.1.1.1"
    sop: str = "1.2.826.0.1.3680043.10.1.1.1.1"

    def ref(self) -> pb.InstanceRef:
        return pb.InstanceRef(
            study_instance_uid=self.study,
            series_instance_uid=self.series,
            sop_instance_uid=self.sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            modality="CT",
        )

    def remapped(self) -> Instance:
        """The UIDs de-identification would give (deterministic, 2.25 form)."""
        return Instance(study=_uid_225(self.study), series=_uid_225(self.series), sop=_uid_225(self.sop))


def _uid_225(uid: str) -> str:
    return "2.25." + str(int(hashlib.sha256(uid.encode()).hexdigest()[:24], 16))


def meta(
    kind: str, instance: Instance, at_ms: int, cause: str = "", partner: str = "", ingested_ms: int = T0_MS
) -> pb.EventMeta:
    return pb.EventMeta(
        event_id=event_id(kind, instance.sop, partner),
        causation_id=cause,
        occurred_at_ms=at_ms,
        ingested_at_ms=ingested_ms,
    )


def journey(
    topics: Topics,
    instance: Instance,
    partner: str = "research-a",
    deidentified: bool = True,
    t0_ms: int = T0_MS,
    org: str = "trust-a",
    delivered: bool = True,
    ingested_ms: int = T0_MS,
) -> list[OutgoingMessage]:
    """ingested → routed → prepared → outcome → the partner gateway's receipt (stored, or failed when
    `delivered` is False) of one instance to one partner; every event says it was ingested at
    `ingested_ms`."""
    delivered_as = instance.remapped() if deidentified else instance
    profile = "research-basic" if deidentified else ""
    ingested = pb.InstanceIngested(
        meta=meta("ingested", instance, t0_ms, ingested_ms=ingested_ms),
        instance=instance.ref(),
        blob=pb.BlobRef(sha256="ab" * 32, size=10),
        source_org=org,
        channel="c-store",
        routing_attributes={"StudyDescription": PHI_DESCRIPTION},
    )
    routed = pb.InstanceRouted(
        meta=meta("routed", instance, t0_ms + 10, ingested.meta.event_id, partner, ingested_ms),
        instance=instance.ref(),
        source_org=org,
        route_id="route-1",
        partner_id=partner,
        profile=profile,
        profile_version=3 if profile else 0,
    )
    prepared = pb.InstancePrepared(
        meta=meta("prepared", instance, t0_ms + 20, routed.meta.event_id, partner, ingested_ms),
        source_instance=instance.ref(),
        instance=delivered_as.ref(),
        source_org=org,
        route_id="route-1",
        partner_id=partner,
        profile=profile,
        profile_version=3 if profile else 0,
        deidentified=deidentified,
    )
    outcome = pb.DeliveryOutcome(
        meta=meta("outcome", instance, t0_ms + 30, prepared.meta.event_id, partner, ingested_ms),
        source_instance=instance.ref(),
        instance=delivered_as.ref(),
        source_org=org,
        route_id="route-1",
        partner_id=partner,
        profile=profile,
        status=pb.DELIVERY_STATUS_DELIVERED if delivered else pb.DELIVERY_STATUS_FAILED,
        topic=topics.partner(partner),
        detail="" if delivered else "partner-unreachable",
    )
    delivery_id = event_id("delivery", prepared.meta.event_id)
    receipt = pb.DeliveryReceipt(
        meta=pb.EventMeta(
            event_id=event_id("receipt", delivery_id, "stored"), occurred_at_ms=t0_ms + 40, ingested_at_ms=ingested_ms
        ),
        delivery_id=delivery_id,
        instance=delivered_as.ref(),
        status=pb.STORE_STATUS_STORED if delivered else pb.STORE_STATUS_FAILED,
        target_kind="dicom",
        detail="" if delivered else "0xA700",
        attempts=1,
        stored_at_ms=t0_ms + 40,
    )
    return [
        event_message(topics.ingested, ingested, instance.study),
        event_message(topics.routed, routed, instance.study),
        event_message(topics.prepared, prepared, instance.study),
        event_message(topics.outcomes, outcome, instance.study),
        event_message(topics.receipts(partner), receipt, delivered_as.study),
    ]


def quarantined(topics: Topics, instance: Instance, at_ms: int, reason: str = "no-route") -> OutgoingMessage:
    event = pb.Quarantined(
        meta=meta("quarantined", instance, at_ms),
        stage="routing",
        reason=reason,
        detail="rules=0",
        source_org="trust-a",
        instance=instance.ref(),
    )
    return event_message(topics.quarantine, event, instance.study)


def incoming(message: OutgoingMessage, offset: int = 0, partition: int = 0, timestamp_ms: int = 0) -> IncomingMessage:
    return IncomingMessage(
        topic=message.topic,
        partition=partition,
        offset=offset,
        key=message.key,
        value=message.value,
        headers=dict(message.headers),
        timestamp_ms=timestamp_ms,
    )


def dead_letter(topics: Topics, original: OutgoingMessage, offset: int = 7, stage: str = "deid") -> OutgoingMessage:
    """What the bus publishes when a stage's handler raised on `original`."""
    return dead_letter_for(
        incoming(original, offset=offset, partition=1),
        PermanentError("tag (0008,0016) missing"),
        topics.dead_letter,
        stage,
    )


def journey_records(topics: Topics, instances: int, uid_root: str, now: datetime) -> list[AuditRecord]:
    """The audit records of `instances` full journeys, one instance each, a second apart (UIDs under
    `uid_root`): what the tamper-evident log's tests store and append."""
    records = []
    for n in range(instances):
        instance = Instance(study=f"{uid_root}.{n}", series=f"{uid_root}.{n}.1", sop=f"{uid_root}.{n}.1.1")
        for offset, message in enumerate(journey(topics, instance, t0_ms=T0_MS + n * 1000)):
            records.append(build_record(incoming(message, offset=offset), topics, now))
    return records

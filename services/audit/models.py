"""The audit HTTP API's response schema (pydantic; documented in the OpenAPI description)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from services.audit.queries import AuditSummary
from services.audit.records import AuditRecord, EventType
from services.audit.rollups import StageReasonCount, Turnaround, VolumeRow, percentile


class SourceRef(BaseModel):
    topic: str | None = Field(None, description="topic the dead-lettered message was read from")
    partition: int | None = None
    offset: int | None = None
    event_type: EventType | None = Field(None, description="type of the dead-lettered event, when known")


class AuditEvent(BaseModel):
    """One event seen on the bus. UIDs as received unless prefixed `delivered_` (remapped by de-identification)."""

    id: str = Field(description="`<event_type>:<event_id>`, unique")
    event_type: EventType
    event_id: str
    causation_id: str | None = Field(None, description="event_id of the event this one was derived from")
    topic: str
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    delivered_study_uid: str | None = None
    delivered_series_uid: str | None = None
    delivered_sop_uid: str | None = None
    source_org: str | None = Field(None, description="organisation that sent the instance")
    channel: str | None = Field(None, description="how it was received: c-store, stow-rs or cli")
    requested_partner_id: str | None = Field(None, description="destination the sender asked for")
    partner_id: str | None = None
    route_id: str | None = None
    profile: str | None = Field(None, description="de-identification profile; none means pass-through")
    profile_version: int | None = None
    deidentified: bool | None = None
    stage: str | None = Field(None, description="stage that quarantined or dead-lettered the instance")
    status: str | None = Field(
        None,
        description="delivered, failed, quarantined, dead-lettered; on receipts stored, superseded, failed, "
        "dead_lettered, study_complete, study_incomplete; on retrievals the HTTP status",
    )
    reason: str | None = Field(None, description="machine-readable reason (quarantine reason, error type)")
    detail: str | None = Field(None, description="machine-readable detail, never PHI")
    source: SourceRef | None = Field(None, description="where a dead letter came from")
    occurred_at: datetime
    ingested_at: datetime | None = None
    recorded_at: datetime
    modality: str | None = Field(None, description="modality of the instance as received (e.g. CT)")
    size_bytes: int | None = Field(None, description="size of the object, on ingested and prepared events")

    @classmethod
    def from_record(cls, record: AuditRecord) -> AuditEvent:
        """Built without validation: a record is what records.py made (a trail can hold thousands)."""
        fields: dict[str, Any] = {k: v for k, v in record.items() if k != "_id"}
        fields["event_type"] = EventType(record["event_type"])
        source = record["source"]
        if source is not None:
            kind = source["event_type"]
            fields["source"] = SourceRef.model_construct(
                topic=source["topic"],
                partition=source["partition"],
                offset=source["offset"],
                event_type=EventType(kind) if kind else None,
            )
        return cls.model_construct(id=record["_id"], **fields)


class Receipt(BaseModel):
    source_org: str | None
    channel: str | None
    instances: int = Field(description="distinct SOP instances received this way")
    first_at: datetime
    last_at: datetime


class StageReason(BaseModel):
    stage: str | None
    reason: str | None
    count: int


class Destination(BaseModel):
    """One destination of the study: which route sent it where, with which profile, and how it went."""

    partner_id: str | None
    route_id: str | None
    profile: str | None
    profile_version: int | None
    deidentified: bool | None
    routed: int = Field(description="instances routed to this destination")
    prepared: int
    delivered: int
    failed: int
    last_delivered_at: datetime | None
    stored: int = Field(0, description="instances the partner's gateway reported stored in its system")
    dead_lettered: int = Field(0, description="instances the gateway gave up on (in its dead letters)")
    last_stored_at: datetime | None = None
    turnaround_ms_p50: int | None = Field(None, description="median ms from ingest accepted to stored")
    turnaround_ms_max: int | None = Field(None, description="slowest ms from ingest accepted to stored")
    quarantined: int = Field(0, description="instances quarantined on the way to this destination (e.g. by deid)")
    completeness: str | None = Field(
        None,
        description="the gateway's check of the last StudyComplete manifest: complete or incomplete; "
        "none before the first check",
    )
    missing: int | None = Field(None, description="instances of the last manifest the gateway does not have")
    state: str = Field(
        "routed",
        description="the furthest state reached: routed, prepared, delivered, stored, complete; or "
        "quarantined, failed, dead_lettered when no instance got past that point",
    )
    reasons: list[StageReason] = Field(
        default_factory=list, description="why instances stopped short: quarantines, failures, dead letters"
    )


class StudyTrail(BaseModel):
    study_uid: str
    instances: int = Field(description="distinct SOP instances received")
    first_at: datetime
    last_at: datetime
    received: list[Receipt]
    destinations: list[Destination]
    quarantined: list[StageReason]
    dead_letters: list[StageReason]
    events: list[AuditEvent] = Field(description="every event, in the order it happened")


class EventPageOut(BaseModel):
    events: list[AuditEvent]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")


class Summary(BaseModel):
    events_by_type: dict[str, int]
    delivered_by_partner: dict[str, int] = Field(description="delivery outcomes with status delivered")
    failed_by_partner: dict[str, int] = Field(description="delivery outcomes with status failed")
    quarantined_by_reason: dict[str, int]
    dead_letters_by_stage: dict[str, int]

    @classmethod
    def from_summary(cls, summary: AuditSummary) -> Summary:
        return cls(
            events_by_type=summary.events_by_type,
            delivered_by_partner=summary.delivered_by_partner,
            failed_by_partner=summary.failed_by_partner,
            quarantined_by_reason=summary.quarantined_by_reason,
            dead_letters_by_stage=summary.dead_letters_by_stage,
        )


class Health(BaseModel):
    status: str
    store: bool


class VolumeOut(BaseModel):
    """One key's figures on one UTC day."""

    day: str = Field(description="UTC day, YYYY-MM-DD")
    key: str = Field(description="organisation id, partner id or modality")
    instances: int = Field(description="org/modality: instances ingested; partner: instances prepared for it")
    studies: int = Field(description="distinct studies among them on that day")
    bytes: int = Field(description="their objects' size")
    delivered: int = Field(0, description="partner only: delivery outcomes with status delivered")
    failed: int = Field(0, description="partner only: delivery outcomes with status failed")

    @classmethod
    def from_row(cls, row: VolumeRow) -> VolumeOut:
        return cls(
            day=row.day,
            key=row.key,
            instances=row.instances,
            studies=row.studies,
            bytes=row.bytes,
            delivered=row.delivered,
            failed=row.failed,
        )


class VolumesOut(BaseModel):
    by: str
    days: list[VolumeOut]


class Percentiles(BaseModel):
    """Milliseconds from ingest accepted (the sender's C-STORE/STOW-RS) to stored in the partner's PACS,
    from a histogram with 20 log-spaced bins per decade: each figure is within about 6%."""

    count: int
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, histogram: dict[int, int]) -> Percentiles:
        return cls(
            count=sum(histogram.values()),
            p50=percentile(histogram, 50),
            p90=percentile(histogram, 90),
            p95=percentile(histogram, 95),
            p99=percentile(histogram, 99),
        )


class DayPercentiles(Percentiles):
    day: str


class PartnerTurnaround(BaseModel):
    partner_id: str
    overall: Percentiles
    days: list[DayPercentiles]

    @classmethod
    def from_turnaround(cls, t: Turnaround) -> PartnerTurnaround:
        return cls(
            partner_id=t.partner,
            overall=Percentiles.of(t.histogram),
            days=[DayPercentiles(day=day, **Percentiles.of(h).model_dump()) for day, h in sorted(t.by_day.items())],
        )


class TurnaroundOut(BaseModel):
    partners: list[PartnerTurnaround]


class StageReasonDay(BaseModel):
    day: str
    kind: str = Field(description="quarantined or dead_letter")
    stage: str
    reason: str
    count: int

    @classmethod
    def from_count(cls, c: StageReasonCount) -> StageReasonDay:
        return cls(day=c.day, kind=c.kind, stage=c.stage, reason=c.reason, count=c.count)


class QuarantinesOut(BaseModel):
    days: list[StageReasonDay]

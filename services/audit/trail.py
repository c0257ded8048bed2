"""A study's records → its trail: received from whom and how, routed where by which rule, de-identified
with which profile, delivered when (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from services.audit.models import AuditEvent, Destination, Receipt, StageReason, StudyTrail
from services.audit.records import HOP_ORDER, AuditRecord, EventType


def in_order(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """By time; events of the same millisecond in hop order (ingested before routed before ...)."""
    return sorted(records, key=lambda r: (r["occurred_at"], HOP_ORDER[EventType(r["event_type"])], r["_id"]))


def _receipts(records: list[AuditRecord]) -> list[Receipt]:
    groups: dict[tuple[str | None, str | None], list[AuditRecord]] = {}
    for r in records:
        if r["event_type"] == EventType.INGESTED:
            groups.setdefault((r["source_org"], r["channel"]), []).append(r)
    return [
        Receipt(
            source_org=org,
            channel=channel,
            instances=len({r["sop_uid"] for r in group}),
            first_at=group[0]["occurred_at"],
            last_at=group[-1]["occurred_at"],
        )
        for (org, channel), group in groups.items()
    ]


def _destinations(records: list[AuditRecord]) -> list[Destination]:
    found: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for r in records:
        if r["event_type"] not in (EventType.ROUTED, EventType.PREPARED, EventType.OUTCOME):
            continue
        d = found.setdefault(
            (r["partner_id"], r["route_id"]),
            {
                "profile": None,
                "profile_version": None,
                "deidentified": None,
                "routed": set(),
                "prepared": set(),
                "delivered": set(),
                "failed": set(),
                "last_delivered_at": None,
            },
        )
        for name in ("profile", "profile_version", "deidentified"):
            if r[name] is not None:
                d[name] = r[name]
        sop = r["sop_uid"]
        if r["event_type"] == EventType.ROUTED:
            d["routed"].add(sop)
        elif r["event_type"] == EventType.PREPARED:
            d["prepared"].add(sop)
        elif r["status"] == "delivered":
            d["delivered"].add(sop)
            d["last_delivered_at"] = r["occurred_at"]
        elif r["status"] == "failed":
            d["failed"].add(sop)
    return [
        Destination(
            partner_id=partner,
            route_id=route,
            profile=d["profile"],
            profile_version=d["profile_version"],
            deidentified=d["deidentified"],
            routed=len(d["routed"]),
            prepared=len(d["prepared"]),
            delivered=len(d["delivered"]),
            # An instance that failed and was then delivered counts as delivered only.
            failed=len(d["failed"] - d["delivered"]),
            last_delivered_at=d["last_delivered_at"],
        )
        for (partner, route), d in found.items()
    ]


def _stage_reasons(records: list[AuditRecord], event_type: EventType) -> list[StageReason]:
    counts = Counter((r["stage"], r["reason"]) for r in records if r["event_type"] == event_type)
    return [StageReason(stage=stage, reason=reason, count=n) for (stage, reason), n in counts.items()]


def build_trail(study_uid: str, records: Iterable[AuditRecord]) -> StudyTrail | None:
    """None when nothing is known about the study."""
    ordered = in_order(records)
    if not ordered:
        return None
    first_at: datetime = ordered[0]["occurred_at"]
    return StudyTrail(
        study_uid=study_uid,
        instances=len({r["sop_uid"] for r in ordered if r["event_type"] == EventType.INGESTED}),
        first_at=first_at,
        last_at=ordered[-1]["occurred_at"],
        received=_receipts(ordered),
        destinations=_destinations(ordered),
        quarantined=_stage_reasons(ordered, EventType.QUARANTINED),
        dead_letters=_stage_reasons(ordered, EventType.DEAD_LETTER),
        events=[AuditEvent.from_record(r) for r in ordered],
    )

"""A study's records → its trail: received from whom and how, routed where by which rule, de-identified
with which profile, delivered when, and stored in the partner's PACS when, with the turnaround from
ingest to stored (pure)."""

from __future__ import annotations

import statistics
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


def _delivered_sop(record: AuditRecord) -> str | None:
    return record["delivered_sop_uid"] or record["sop_uid"]


def _destinations(records: list[AuditRecord]) -> list[Destination]:
    found: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    # A receipt knows the partner and the instance as delivered, not the route: the outcome links them.
    route_of: dict[tuple[str | None, str | None], tuple[str | None, str | None]] = {}
    for r in records:
        if r["event_type"] == EventType.OUTCOME:
            route_of[(r["partner_id"], _delivered_sop(r))] = (r["partner_id"], r["route_id"])
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
                "stored": {},
                "dead_lettered": set(),
                "last_stored_at": None,
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
    for r in records:
        if r["event_type"] == EventType.RECEIPT:
            key = route_of.get((r["partner_id"], r["delivered_sop_uid"]))
            if key is not None and key in found:
                _add_receipt(found[key], r)
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
            stored=len(d["stored"]),
            dead_lettered=len(d["dead_lettered"] - set(d["stored"])),
            last_stored_at=d["last_stored_at"],
            turnaround_ms_p50=_percentile(list(d["stored"].values()), 50),
            turnaround_ms_max=max(d["stored"].values(), default=None),
        )
        for (partner, route), d in found.items()
    ]


def _add_receipt(destination: dict[str, Any], receipt: AuditRecord) -> None:
    sop = receipt["delivered_sop_uid"]
    if receipt["status"] == "stored":
        # Turnaround: from ingest's acceptance to stored in the partner's system. The first receipt
        # counts; a re-send after a gateway restart does not make the study slower.
        if sop not in destination["stored"] and receipt["ingested_at"] is not None:
            elapsed = receipt["occurred_at"] - receipt["ingested_at"]
            destination["stored"][sop] = int(elapsed.total_seconds() * 1000)
        if destination["last_stored_at"] is None or receipt["occurred_at"] > destination["last_stored_at"]:
            destination["last_stored_at"] = receipt["occurred_at"]
    elif receipt["status"] == "dead_lettered":
        destination["dead_lettered"].add(sop)


def _percentile(values: list[int], pct: int) -> int | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return int(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


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

"""A study's records → its trail: received from whom and how, routed where by which rule, de-identified
with which profile, delivered when, stored in the partner's PACS when (with the turnaround from
ingest to stored), whether the partner's gateway found the study complete, and the furthest state
each destination reached (pure)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from services.audit.models import AuditEvent, Destination, Receipt, StageReason, StudyTrail
from services.audit.pages import StoredRecord
from services.audit.records import HOP_ORDER, RECORD_FIELDS, AuditRecord, EventType, delivered_sop


def in_order(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """By time; events of the same millisecond in hop order (ingested before routed before ...)."""
    return sorted(records, key=lambda r: (r["occurred_at"], _HOP_RANK[r["event_type"]], r["_id"]))


_HOP_RANK: dict[str, int] = {t.value: rank for t, rank in HOP_ORDER.items()}  # by value: no EventType per record


# Event types as plain strings: an EventType member costs a lookup on the enum class each time (a
# trail compares thousands of records), a module constant does not.
_INGESTED, _ROUTED, _PREPARED, _OUTCOME = (
    EventType.INGESTED.value,
    EventType.ROUTED.value,
    EventType.PREPARED.value,
    EventType.OUTCOME.value,
)
_RECEIPT, _QUARANTINED = EventType.RECEIPT.value, EventType.QUARANTINED.value
_DESTINATION_EVENTS = frozenset({_ROUTED, _PREPARED, _OUTCOME})


def _receipts(records: list[AuditRecord]) -> list[Receipt]:
    groups: dict[tuple[str | None, str | None], list[AuditRecord]] = {}
    for r in records:
        if r["event_type"] == _INGESTED:
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
    # A receipt knows the partner and the instance as delivered, not the route: the outcome links them.
    route_of: dict[tuple[str | None, str | None], tuple[str | None, str | None]] = {}
    for r in records:
        if r["event_type"] == _OUTCOME:
            route_of[(r["partner_id"], delivered_sop(r))] = (r["partner_id"], r["route_id"])
    for r in records:
        if r["event_type"] not in _DESTINATION_EVENTS:
            continue
        key = (r["partner_id"], r["route_id"])
        d = found.get(key)
        if d is None:
            d = found[key] = _new_destination()
        for name in ("profile", "profile_version", "deidentified"):
            if r[name] is not None:
                d[name] = r[name]
        sop = r["sop_uid"]
        if r["event_type"] == _ROUTED:
            d["routed"].add(sop)
        elif r["event_type"] == _PREPARED:
            d["prepared"].add(sop)
        elif r["status"] == "delivered":
            d["delivered"].add(sop)
            d["failed"].discard(sop)
            d["last_delivered_at"] = r["occurred_at"]
        elif r["status"] == "failed":
            # The last outcome stands (records are in time order): a delivery whose feed message expired
            # unread is failed, where it counted as delivered and its reason was dropped.
            d["failed"].add(sop)
            d["delivered"].discard(sop)
            d["reasons"][("delivery", r["detail"] or "failed", sop)] += 1
    for r in records:
        if r["event_type"] == _QUARANTINED and (r["partner_id"], r["route_id"]) in found:
            # Quarantined on the way to one destination (deid refusing an instance for its profile).
            d = found[(r["partner_id"], r["route_id"])]
            d["quarantined"].add(r["sop_uid"])
            d["reasons"][(r["stage"], r["reason"], r["sop_uid"])] += 1
        elif r["event_type"] == _RECEIPT and r["status"] in STUDY_CHECKS:
            # A study receipt names the partner and the study as delivered, not an instance or a
            # route: it answers for every destination of that partner. Records are in time order, so
            # the last check wins (a study that grew is announced and checked again).
            for (partner, _route), d in found.items():
                if partner == r["partner_id"]:
                    d["study_check"] = r
        elif r["event_type"] == _RECEIPT:
            route = route_of.get((r["partner_id"], r["delivered_sop_uid"]))
            if route is not None and route in found:
                _add_receipt(found[route], r)
    return [_destination(partner, route, d) for (partner, route), d in found.items()]


def _new_destination() -> dict[str, Any]:
    return {
        "profile": None,
        "profile_version": None,
        "deidentified": None,
        "routed": set(),
        "prepared": set(),
        "delivered": set(),
        "failed": set(),
        "last_delivered_at": None,
        "stored": {},  # delivered SOP Instance UID -> turnaround ms
        "stored_without_time": set(),  # stored, but the receipt carried no ingest time
        "dead_lettered": set(),
        "last_stored_at": None,
        "quarantined": set(),
        "reasons": Counter(),
        "study_check": None,
    }


def _destination(partner: str | None, route: str | None, d: dict[str, Any]) -> Destination:
    stored = set(d["stored"]) | d["stored_without_time"]
    check: AuditRecord | None = d["study_check"]
    completeness = None if check is None else STUDY_CHECKS[str(check["status"])]
    progress = Progress(
        routed=len(d["routed"]),
        prepared=len(d["prepared"]),
        delivered=len(d["delivered"]),
        stored=len(stored),
        quarantined=len(d["quarantined"] - d["prepared"]),
        # An instance that failed and was then delivered counts as delivered only.
        failed=len(d["failed"] - d["delivered"]),
        dead_lettered=len(d["dead_lettered"] - stored),
        completeness=completeness,
    )
    reasons: Counter[tuple[str | None, str | None]] = Counter()
    for (stage, reason, sop), _n in d["reasons"].items():
        if not (stage == "delivery" and sop in d["delivered"]) and not (stage == "gateway" and sop in stored):
            reasons[(stage, reason)] += 1
    if completeness == "incomplete" and check is not None:
        reasons[("gateway", "study_incomplete")] += 1
    return Destination(
        partner_id=partner,
        route_id=route,
        profile=d["profile"],
        profile_version=d["profile_version"],
        deidentified=d["deidentified"],
        routed=progress.routed,
        prepared=progress.prepared,
        delivered=progress.delivered,
        failed=progress.failed,
        last_delivered_at=d["last_delivered_at"],
        stored=progress.stored,
        dead_lettered=progress.dead_lettered,
        last_stored_at=d["last_stored_at"],
        turnaround_ms_p50=_percentile(list(d["stored"].values()), 50),
        turnaround_ms_max=max(d["stored"].values(), default=None),
        quarantined=progress.quarantined,
        completeness=completeness,
        missing=None if check is None else _missing(check),
        state=furthest_state(progress),
        reasons=[
            StageReason(stage=stage, reason=reason, count=n)
            for (stage, reason), n in sorted(reasons.items(), key=lambda item: (str(item[0][0]), str(item[0][1])))
        ],
    )


# Study receipts' statuses → the destination's completeness.
STUDY_CHECKS = {"study_complete": "complete", "study_incomplete": "incomplete"}

# The states of one destination, in order; a later one means every earlier one was reached.
STATES = ("received", "routed", "prepared", "delivered", "stored", "complete")


@dataclass(frozen=True)
class Progress:
    """Distinct instances of one destination at each point, and the last completeness check."""

    routed: int = 0
    prepared: int = 0
    delivered: int = 0
    stored: int = 0
    quarantined: int = 0
    failed: int = 0
    dead_lettered: int = 0
    completeness: str | None = None


def furthest_state(p: Progress) -> str:
    """The furthest state any instance of the destination reached; "complete" only when the partner's
    gateway checked the last manifest and had every instance of it. When no instance got past the
    point where some stopped, the state says where they stopped: quarantined (before prepared),
    failed (delivery) or dead_lettered (the partner's gateway)."""
    if p.completeness == "complete":
        return "complete"
    if p.stored:
        return "stored"
    if p.dead_lettered:
        return "dead_lettered"
    if p.delivered:
        return "delivered"
    if p.failed:
        return "failed"
    if p.prepared:
        return "prepared"
    if p.quarantined:
        return "quarantined"
    return "routed" if p.routed else "received"


_MISSING = re.compile(r"([0-9]{1,9}) of ")


def _missing(check: AuditRecord) -> int:
    """From the receipt's detail, "<missing> of <count> missing"; 0 for a complete study. ASCII digits,
    at most nine: the detail is the partner's text, and "²" (a digit to `isdigit`, not to `int`) or a
    number past int32 had made the study's trail a 500 and its status call fail."""
    found = _MISSING.match(check["detail"] or "")
    return int(found.group(1)) if found else 0


def _add_receipt(destination: dict[str, Any], receipt: AuditRecord) -> None:
    sop = receipt["delivered_sop_uid"]
    if receipt["status"] == "stored":
        # Turnaround: from ingest's acceptance to stored in the partner's system. The first receipt
        # counts; a re-send after a gateway restart does not make the study slower.
        if sop not in destination["stored"] and receipt["ingested_at"] is not None:
            elapsed = receipt["occurred_at"] - receipt["ingested_at"]
            destination["stored"][sop] = int(elapsed.total_seconds() * 1000)
        elif receipt["ingested_at"] is None:
            destination["stored_without_time"].add(sop)
        if destination["last_stored_at"] is None or receipt["occurred_at"] > destination["last_stored_at"]:
            destination["last_stored_at"] = receipt["occurred_at"]
    elif receipt["status"] == "dead_lettered":
        destination["dead_lettered"].add(sop)
        destination["reasons"][("gateway", receipt["detail"] or "dead_lettered", sop)] += 1


def _percentile(values: list[int], pct: int) -> int | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return int(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


def _stage_reasons(records: list[AuditRecord], event_type: EventType) -> list[StageReason]:
    counts = Counter((r["stage"], r["reason"]) for r in records if r["event_type"] == event_type)
    return [StageReason(stage=stage, reason=reason, count=n) for (stage, reason), n in counts.items()]


def as_is(record: AuditRecord) -> AuditRecord:
    """A record as it is stored (what a key that may read everything reads)."""
    return record


def build_trail(
    study_uid: str, records: Iterable[AuditRecord], readable: Callable[[AuditRecord], AuditRecord] = as_is
) -> StudyTrail | None:
    """None when nothing is known about the study. The summary counts `records`; the events listed are
    `readable(record)` (what the key may read: scopes.Scope.readable), so hidden UIDs count all the same."""
    ordered = in_order(records)
    return _trail(study_uid, ordered, [AuditEvent.from_record(readable(r)) for r in ordered]) if ordered else None


def events_json(records: Sequence[AuditRecord]) -> bytes:
    """The JSON array `[AuditEvent, ...]` of `records`, byte for byte what pydantic writes for the models
    (a test compares them), without building a model per event: records read from a JSON page are
    copied as stored (`record_json`, AuditEvent's fields in its order), the others written by orjson over
    the records themselves; `_id` written as `id` (a JSON string value cannot hold the unescaped
    `{"_id":`, so only keys are renamed)."""
    if all(type(r) is StoredRecord for r in records):
        lines = [memoryview(r.json)[_ID_KEY:] for r in records]  # type: ignore[attr-defined]
        return b'[{"id":' + b',{"id":'.join(lines) + b"]" if lines else b"[]"
    rows = [r if tuple(r) == RECORD_FIELDS else {name: r.get(name) for name in RECORD_FIELDS} for r in records]
    return orjson.dumps(rows, option=orjson.OPT_UTC_Z).replace(b'{"_id":', b'{"id":')


_ID_KEY = len(b'{"_id":')
if RECORD_FIELDS[0] != "_id":
    raise RuntimeError("a stored record's JSON must start with its _id")


def trail_json(
    study_uid: str, records: Iterable[AuditRecord], readable: Callable[[AuditRecord], AuditRecord] = as_is
) -> bytes | None:
    """`build_trail(...).model_dump_json()`, with the events (nearly all of a trail's bytes) written by
    `events_json`; None when nothing is known about the study."""
    ordered = in_order(records)
    if not ordered:
        return None
    head = _trail(study_uid, ordered, []).model_dump_json().encode()
    empty = b'"events":[]}'
    if not head.endswith(empty):
        raise RuntimeError("StudyTrail's last field must be its events")
    shown = ordered if readable is as_is else [readable(r) for r in ordered]
    return head[: -len(empty)] + b'"events":' + events_json(shown) + b"}"


def _trail(study_uid: str, ordered: list[AuditRecord], events: list[AuditEvent]) -> StudyTrail:
    first_at: datetime = ordered[0]["occurred_at"]
    return StudyTrail(
        study_uid=study_uid,
        instances=len({r["sop_uid"] for r in ordered if r["event_type"] == _INGESTED}),
        first_at=first_at,
        last_at=ordered[-1]["occurred_at"],
        received=_receipts(ordered),
        destinations=_destinations(ordered),
        quarantined=_stage_reasons(ordered, EventType.QUARANTINED),
        dead_letters=_stage_reasons(ordered, EventType.DEAD_LETTER),
        events=events,
    )

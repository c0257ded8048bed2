"""What an audit query asks and what it gets back, independent of the database (pure).

Events are listed in (occurred_at, _id) order; a cursor is the position of the last event of a page in
that order, so paging never repeats one. It is a position in event time: an event recorded after a page
has passed its time (stages and lanes are read in no order between them, a backlog after a restart, a
partner's receipt dated when it stored) is not on a later page. A complete listing pages a period that
ended a while ago (minutes; longer after an outage).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.audit.records import AuditRecord, EventType, to_datetime, to_epoch_ms


@dataclass(frozen=True)
class EventFilter:
    """All given conditions must hold. `since` is inclusive, `until` exclusive."""

    org: str | None = None
    partner: str | None = None
    event_type: EventType | None = None
    since: datetime | None = None
    until: datetime | None = None


class PeriodPurged(Exception):
    """The period asked for ends before `retained_from` (a UTC day): retention purged everything in it."""

    def __init__(self, retained_from: str) -> None:
        super().__init__(f"purged by retention: audit records and figures are kept from {retained_from} on")
        self.retained_from = retained_from


def wholly_purged(until: datetime | None, retained_from: str | None) -> bool:
    """True when [.., until) ends at or before the start (UTC) of the first retained day; an open end never does."""
    if until is None or retained_from is None:
        return False
    return to_epoch_ms(until) <= to_epoch_ms(datetime.fromisoformat(retained_from).replace(tzinfo=UTC))


@dataclass(frozen=True)
class Cursor:
    occurred_at: datetime
    record_id: str


@dataclass(frozen=True)
class EventPage:
    records: list[AuditRecord]
    next_cursor: Cursor | None


@dataclass(frozen=True)
class AuditSummary:
    """Delivered/failed count delivery outcomes (one per instance and destination and attempt);
    quarantined counts quarantine events per reason."""

    events_by_type: dict[str, int] = field(default_factory=dict)
    delivered_by_partner: dict[str, int] = field(default_factory=dict)
    failed_by_partner: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    dead_letters_by_stage: dict[str, int] = field(default_factory=dict)


def cursor_after(record: AuditRecord) -> Cursor:
    return Cursor(record["occurred_at"], record["_id"])


def encode_cursor(cursor: Cursor) -> str:
    raw = f"{to_epoch_ms(cursor.occurred_at)}|{cursor.record_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """Raises ValueError for anything encode_cursor did not make."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not valid") from exc
    epoch_ms, sep, record_id = raw.partition("|")
    if not sep or not record_id or not epoch_ms.lstrip("-").isdigit():
        raise ValueError("cursor is not valid")
    try:
        return Cursor(to_datetime(int(epoch_ms)), record_id)
    except OverflowError:  # a moment outside the years 1-9999: made by hand, not by encode_cursor
        raise ValueError("cursor is not valid") from None


def time_filter(since: datetime | None, until: datetime | None) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if since is not None:
        bounds["$gte"] = since
    if until is not None:
        bounds["$lt"] = until
    return {"occurred_at": bounds} if bounds else {}


def mongo_filter(query: EventFilter, after: Cursor | None = None) -> dict[str, Any]:
    """The MongoDB filter for one page (only operators FerretDB 1.x supports)."""
    conditions: list[dict[str, Any]] = []
    if query.org is not None:
        conditions.append({"source_org": query.org})
    if query.partner is not None:
        # A partner's events include those that asked for it (ingested with it as requested destination),
        # as a partner key's scope, summary and trail count them (scopes.Scope.admits).
        conditions.append({"$or": [{"partner_id": query.partner}, {"requested_partner_id": query.partner}]})
    if query.event_type is not None:
        conditions.append({"event_type": query.event_type.value})
    if since_until := time_filter(query.since, query.until):
        conditions.append(since_until)
    if after is not None:
        conditions.append(
            {
                "$or": [
                    {"occurred_at": {"$gt": after.occurred_at}},
                    {"occurred_at": after.occurred_at, "_id": {"$gt": after.record_id}},
                ]
            }
        )
    if not conditions:
        return {}
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}

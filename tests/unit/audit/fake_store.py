"""An in-memory AuditStore: the Protocol's behaviour in plain Python, for tests without MongoDB."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from services.audit.queries import AuditSummary, Cursor, EventFilter, EventPage, cursor_after
from services.audit.records import AuditRecord


class InMemoryAuditStore:
    def __init__(self) -> None:
        self.records: dict[str, AuditRecord] = {}
        self.inserts = 0
        self.reachable = True

    def insert(self, records: Sequence[AuditRecord]) -> int:
        self.inserts += 1
        new = 0
        for r in records:
            if r["_id"] not in self.records:  # the first copy wins, as with a unique index
                self.records[r["_id"]] = r
                new += 1
        return new

    def study_trail(self, study_uid: str) -> list[AuditRecord]:
        direct = [r for r in self.records.values() if study_uid in (r["study_uid"], r["delivered_study_uid"])]
        copies = {r["delivered_study_uid"] for r in direct} - {None, study_uid}
        return direct + [r for r in self.records.values() if r["delivered_study_uid"] in copies and r not in direct]

    def events(self, query: EventFilter, limit: int, after: Cursor | None = None) -> EventPage:
        def wanted(r: AuditRecord) -> bool:
            return (
                (query.org is None or r["source_org"] == query.org)
                and (query.partner is None or r["partner_id"] == query.partner)
                and (query.event_type is None or r["event_type"] == query.event_type)
                and (query.since is None or r["occurred_at"] >= query.since)
                and (query.until is None or r["occurred_at"] < query.until)
                and (after is None or (r["occurred_at"], r["_id"]) > (after.occurred_at, after.record_id))
            )

        found = sorted(filter(wanted, self.records.values()), key=lambda r: (r["occurred_at"], r["_id"]))
        page = found[:limit]
        return EventPage(page, cursor_after(page[-1]) if len(found) > limit else None)

    def summary(self, since: datetime | None = None, until: datetime | None = None) -> AuditSummary:
        chosen = [
            r
            for r in self.records.values()
            if (since is None or r["occurred_at"] >= since) and (until is None or r["occurred_at"] < until)
        ]

        def count(kind: str, key: str, status: str | None = None) -> dict[str, int]:
            picked = [r for r in chosen if r["event_type"] == kind and (status is None or r["status"] == status)]
            return dict(Counter(str(r.get(key)) for r in picked))

        return AuditSummary(
            events_by_type=dict(Counter(r["event_type"] for r in chosen)),
            delivered_by_partner=count("outcome", "partner_id", "delivered"),
            failed_by_partner=count("outcome", "partner_id", "failed"),
            quarantined_by_reason=count("quarantined", "reason"),
            dead_letters_by_stage=count("dead_letter", "stage"),
        )

    def ping(self) -> bool:
        return self.reachable

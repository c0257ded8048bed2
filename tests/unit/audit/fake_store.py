"""An in-memory AuditStore: the Protocol's behaviour in plain Python, for tests without MongoDB.

Aggregates go through the same pure counters as MongoAuditStore (services/audit/rollups.py), applied
once per new record, so the API tests exercise the real arithmetic."""

from __future__ import annotations

from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any

from services.audit import rollups
from services.audit.queries import AuditSummary, Cursor, EventFilter, EventPage, cursor_after
from services.audit.records import AuditRecord
from services.audit.scopes import Scope
from services.audit.store import day_range, matches, summary_from_counts, trail_of


class InMemoryAuditStore:
    def __init__(self) -> None:
        self.records: dict[str, AuditRecord] = {}
        self.counters: dict[str, dict[str, Any]] = {}
        self.studies: set[str] = set()
        self.inserts = 0
        self.reachable = True

    def insert(self, records: Sequence[AuditRecord]) -> int:
        self.inserts += 1
        new: list[AuditRecord] = []
        for r in records:
            if r["_id"] not in self.records:  # the first copy wins, as with a unique index
                self.records[r["_id"]] = r
                new.append(r)
        marks = [m for r in new for m in rollups.study_marks(r) if m not in self.studies]
        self.studies.update(marks)
        rollups.apply(self.counters, rollups.deltas_for(new, dict.fromkeys(marks)))
        return len(new)

    def study_trail(self, study_uid: str) -> list[AuditRecord]:
        def chain(uid: str, _known: Container[str]) -> list[AuditRecord]:
            return [r for r in self.records.values() if uid in (r["study_uid"], r["delivered_study_uid"])]

        return trail_of(study_uid, chain)

    def events(self, query: EventFilter, limit: int, after: Cursor | None = None) -> EventPage:
        def wanted(r: AuditRecord) -> bool:
            return matches(query, r) and (
                after is None or (r["occurred_at"], r["_id"]) > (after.occurred_at, after.record_id)
            )

        found = sorted(filter(wanted, self.records.values()), key=lambda r: (r["occurred_at"], r["_id"]))
        page = found[:limit]
        return EventPage(page, cursor_after(page[-1]) if len(found) > limit else None)

    def _bounds(self) -> tuple[str, str] | None:
        days = sorted(rollups.day_of(r["occurred_at"]) for r in self.records.values())
        return (days[0], days[-1]) if days else None

    def summary(
        self, since: datetime | None = None, until: datetime | None = None, scope: Scope | None = None
    ) -> AuditSummary:
        chosen = [
            r
            for r in self.records.values()
            if (since is None or r["occurred_at"] >= since) and (until is None or r["occurred_at"] < until)
        ]
        docs: dict[str, dict[str, Any]] = {}
        rollups.apply(docs, rollups.deltas_for(chosen, []))
        key = None if scope is None or scope.everything else str(scope)
        return summary_from_counts(rollups.summary_counts(docs.get, day_range(since, until, self._bounds()), key))

    def volumes(
        self, dimension: str, since: datetime | None, until: datetime | None, key: str | None = None
    ) -> list[rollups.VolumeRow]:
        return rollups.volumes(self.counters.get, dimension, day_range(since, until, self._bounds()), key)

    def turnaround(
        self, since: datetime | None, until: datetime | None, partner: str | None = None
    ) -> list[rollups.Turnaround]:
        return rollups.turnaround(self.counters.get, day_range(since, until, self._bounds()), partner)

    def stage_reasons(
        self, since: datetime | None, until: datetime | None, scope: Scope | None = None
    ) -> list[rollups.StageReasonCount]:
        key = None if scope is None or scope.everything else str(scope)
        return rollups.stage_reasons(self.counters.get, day_range(since, until, self._bounds()), key)

    def ping(self) -> bool:
        return self.reachable

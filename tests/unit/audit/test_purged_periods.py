"""A period retention purged wholly is answered 410 Gone with the first retained day, not an empty
answer; a period reaching into the retained days is answered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient

from services.audit.api import create_app
from services.audit.queries import AuditSummary, EventFilter, EventPage, PeriodPurged
from services.audit.scopes import Scope
from tests.unit.audit.fake_store import InMemoryAuditStore

RETAINED_FROM = "2026-01-10"


class PurgedBefore(InMemoryAuditStore):
    """Refuses a period ending by RETAINED_FROM, as the keyed store does after a purge."""

    def _check(self, until: datetime | None) -> None:
        if until is not None and until.date().isoformat() < RETAINED_FROM:
            raise PeriodPurged(RETAINED_FROM)

    def events(self, query: EventFilter, limit: int, after: Any = None) -> EventPage:
        self._check(query.until)
        return super().events(query, limit, after)

    def summary(
        self, since: datetime | None = None, until: datetime | None = None, scope: Scope | None = None
    ) -> AuditSummary:
        self._check(until)
        return super().summary(since, until, scope)


def test_a_wholly_purged_period_is_gone_and_says_from_when_records_are_kept() -> None:
    client = TestClient(create_app(PurgedBefore(), None))
    for path in ("/audit/events", "/audit/summary"):
        gone = client.get(path, params={"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"})
        assert gone.status_code == 410
        assert gone.json()["retained_from"] == RETAINED_FROM and "purged" in gone.json()["detail"]
        kept = client.get(path, params={"since": "2026-01-01T00:00:00Z", "until": "2026-01-12T00:00:00Z"})
        assert kept.status_code == 200

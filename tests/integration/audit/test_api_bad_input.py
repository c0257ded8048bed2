"""The audit API with its real access log (FerretDB on PostgreSQL): requests whose parameters the
database cannot store as given are still recorded and answered, dates that leave the calendar in UTC
are a 422, and no 422 repeats what was sent. Before: 500s, and 503 "try again" for ever (a probe of the
running service, 2026-12-06)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pymongo.database import Database

from services.audit.access_log import MongoAccessLog
from services.audit.analysts import Analyst, AnalystStore, CachedKeyCheck
from services.audit.api import create_app
from services.audit.store import MongoAuditStore

pytestmark = pytest.mark.integration

NAME = "SMITH^ARJUN^R"  # what a mistyped query might carry


@pytest.fixture
def client(db: Database) -> TestClient:
    store = MongoAuditStore(db["audit_events"])
    store.ensure_indexes()
    key = AnalystStore(db).add(Analyst("ann"))
    app = create_app(store, CachedKeyCheck(AnalystStore(db)).holder, MongoAccessLog(db["audit_events_access"]))
    return TestClient(app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)


@pytest.mark.parametrize("query", ["a.b=1", "%24where=1", "a%00b=1", "x=a%00b", "%25x=1"])
def test_parameters_the_database_cannot_take_as_given_are_recorded_and_answered(
    client: TestClient, db: Database, query: str
) -> None:
    answer = client.get(f"/audit/summary?{query}")
    assert answer.status_code == 200, answer.text
    recorded = list(db["audit_events_access"].find({"path": "/audit/summary"}))
    assert len(recorded) == 1 and recorded[0]["status"] == 200
    assert "\x00" not in str(recorded[0]["params"])


def test_a_nul_in_a_filter_or_a_path_is_a_client_error_not_a_server_error(client: TestClient) -> None:
    assert client.get("/audit/events?org=a%00b").status_code == 422
    assert client.get("/audit/studies/1.2%00").status_code in (404, 422)


@pytest.mark.parametrize("query", ["until=0001-01-01T00:00:00%2B01:00", "since=9999-12-31T23:59:59-01:00"])
@pytest.mark.parametrize("path", ["/audit/events", "/audit/summary", "/audit/volumes?by=org&", "/audit/export/events"])
def test_a_date_that_leaves_the_calendar_in_utc_is_a_422(client: TestClient, path: str, query: str) -> None:
    separator = "" if path.endswith("&") else "?"
    answer = client.get(f"{path}{separator}{query}")
    assert answer.status_code == 422, (answer.status_code, answer.text[:200])


def test_a_422_says_which_parameter_and_why_without_repeating_it(client: TestClient) -> None:
    for path in (f"/audit/studies/{NAME}", f"/audit/events?since={NAME}", f"/audit/events?org={NAME}"):
        answer = client.get(path)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"], answer.text
        assert NAME not in answer.text and "SMITH" not in answer.text

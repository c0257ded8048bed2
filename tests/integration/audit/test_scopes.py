"""Scoped analysts' keys against the real MongoDB-wire server: the scope is stored with the key's digest,
the API over the keyed store answers a scoped key with its own records only (404 for a study outside
it, 403 for a filter naming another organisation), and every request lands in the access log."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pymongo.database import Database

from services.audit.access_log import MongoAccessLog
from services.audit.analysts import Analyst, AnalystStore, CachedKeyCheck
from services.audit.api import create_app
from services.audit.records import build_record
from services.audit.scopes import Scope
from services.audit.store import MongoAuditStore
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey

pytestmark = pytest.mark.integration

TOPICS = Topics("t-sc.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
MINE = Instance()
THEIRS = Instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1")


def test_a_scoped_key_sees_its_own_records_is_refused_others_and_is_recorded(db: Database) -> None:
    store = MongoAuditStore(db["audit_events"])
    store.ensure_indexes()
    messages = [*journey(TOPICS, MINE), *journey(TOPICS, THEIRS, org="trust-z", partner="ai-c", t0_ms=T0_MS + 4000)]
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    analysts = AnalystStore(db)
    org_key = analysts.add(Analyst("ola", scope=Scope.parse("org:trust-a")))
    all_key = analysts.add(Analyst("ann"))
    assert {(a.analyst_id, str(a.scope)) for a in analysts.list()} == {("ola", "org:trust-a"), ("ann", "all")}
    db["audit_analysts"].insert_one({"_id": "legacy-digest", "analyst_id": "old", "name": ""})
    assert analysts.key_holder("legacy-digest") == Analyst("old"), "a key from before scopes sees everything"

    app = TestClient(create_app(store, CachedKeyCheck(analysts).holder, MongoAccessLog(db["audit_events_access"])))

    def get(key: str, path: str, **params: str) -> int:
        return app.get(path, params=params, headers={"Authorization": f"Bearer {key}"}).status_code

    mine = app.get(f"/audit/studies/{MINE.study}", headers={"Authorization": f"Bearer {org_key}"})
    mine_events = mine.json()["events"]  # the partners' receipts for what it sent name no organisation
    assert mine.status_code == 200 and {e["source_org"] for e in mine_events if e["event_type"] != "receipt"} == {
        "trust-a"
    }
    assert get(org_key, f"/audit/studies/{THEIRS.study}") == 404
    assert get(all_key, f"/audit/studies/{THEIRS.study}") == 200
    assert get(org_key, "/audit/events", org="trust-z") == 403
    page = app.get("/audit/events", headers={"Authorization": f"Bearer {org_key}"}).json()
    assert page["events"] and {e["source_org"] for e in page["events"]} == {"trust-a"}

    entries = list(db["audit_events_access"].find({}, {"_id": 0, "analyst_id": 1, "status": 1, "path": 1}))
    assert len(entries) == 5
    assert {"analyst_id": "ola", "status": 403, "path": "/audit/events"} in entries
    assert {"analyst_id": "ann", "status": 200, "path": f"/audit/studies/{THEIRS.study}"} in entries
    refused = db["audit_events_access"].find_one({"status": 404})
    assert refused is not None and refused["event_type"]["code"] == "110112"


def test_a_partner_keys_events_include_those_that_asked_for_it_as_its_summary_does(db: Database) -> None:
    """A study sent with the partner as its requested destination: the partner key's summary and trail
    counted its ingested event, `/audit/events` left it out."""
    from services.common.events import event_message
    from services.proto_gen.imx.v1 import events_pb2

    store = MongoAuditStore(db["audit_events"])
    store.ensure_indexes()
    messages = journey(TOPICS, MINE, partner="care-b", deidentified=False)  # its UIDs are the partner's
    ingested = events_pb2.InstanceIngested.FromString(messages[0].value)
    ingested.requested_destination = "care-b"
    messages[0] = event_message(TOPICS.ingested, ingested, MINE.study)
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    analysts = AnalystStore(db)
    key = analysts.add(Analyst("pat", scope=Scope.parse("partner:care-b")))
    app = TestClient(create_app(store, CachedKeyCheck(analysts).holder), headers={"Authorization": f"Bearer {key}"})

    listed = app.get("/audit/events", params={"event_type": "ingested"}).json()["events"]
    assert [(e["event_type"], e["requested_partner_id"]) for e in listed] == [("ingested", "care-b")]
    every = {e["event_type"] for e in app.get("/audit/events").json()["events"]}
    trail = {e["event_type"] for e in app.get(f"/audit/studies/{MINE.study}").json()["events"]}
    assert every == trail and "ingested" in every

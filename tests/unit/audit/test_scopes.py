"""Scoped analysts' keys (issue 8 item 5): an organisation's or partner's key sees only its own records,
is refused (403) when it names someone else's, gets a 404 for a study it has no record of, and every
request, answered or refused, is recorded as a query of the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.audit.access_log import AccessEntry, MemoryAccessLog
from services.audit.analysts import Analyst
from services.audit.api import create_app
from services.audit.records import build_record
from services.audit.scopes import Scope, ScopeDenied
from services.common.messages import OutgoingMessage, TransientError
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance
from services.delivery.retention_watch import expired_outcome
from services.proto_gen.imx.v1 import events_pb2 as pb
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey, quarantined
from tests.unit.audit.fake_store import InMemoryAuditStore

TOPICS = Topics("t-scopes.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
SHARED = Instance()  # sent by trust-a to research-a and care-b
OTHER = Instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1")  # trust-z to ai-c
KEYS = {
    "k-all": Analyst("ann"),
    "k-trust-a": Analyst("ola", scope=Scope.parse("org:trust-a")),
    "k-trust-z": Analyst("zed", scope=Scope.parse("org:trust-z")),
    "k-care-b": Analyst("pia", scope=Scope.parse("partner:care-b")),
}


def _store() -> InMemoryAuditStore:
    messages = [
        *journey(TOPICS, SHARED),
        *journey(TOPICS, SHARED, partner="care-b", deidentified=False, t0_ms=T0_MS + 2000),
        quarantined(TOPICS, Instance(sop=SHARED.sop[:-1] + "3"), T0_MS + 3000),
        *journey(TOPICS, OTHER, org="trust-z", partner="ai-c", t0_ms=T0_MS + 4000),
    ]
    store = InMemoryAuditStore()
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    return store


@pytest.fixture
def log() -> MemoryAccessLog:
    return MemoryAccessLog()


@pytest.fixture
def app(log: MemoryAccessLog) -> TestClient:
    return TestClient(create_app(_store(), KEYS.get, log))


def _get(client: TestClient, api_key: str, path: str, **params: str) -> tuple[int, Any]:
    response = client.get(path, params=params, headers={"Authorization": f"Bearer {api_key}"})
    return response.status_code, response.json()


def test_scopes_parse_and_print_and_reject_anything_else() -> None:
    assert Scope.parse("all") == Scope() == Scope.parse("")
    assert str(Scope.parse("org:trust-a")) == "org:trust-a" and str(Scope.parse("partner:ai-c")) == "partner:ai-c"
    for wrong in ("org:", "team:x", "org:Trust A", "partner"):
        with pytest.raises(ValueError):
            Scope.parse(wrong)
    with pytest.raises(ScopeDenied):
        Scope.parse("org:a").narrow("org", "b")


def test_an_organisations_key_sees_only_its_studies_and_a_404_for_anothers(app: TestClient) -> None:
    status, trail = _get(app, "k-trust-a", f"/audit/studies/{SHARED.study}")
    assert status == 200 and {e["source_org"] for e in trail["events"] if e["event_type"] != "receipt"} == {"trust-a"}
    # The partners' receipts for what it sent (they name no organisation): it sees its study stored.
    _status, everything = _get(app, "k-all", f"/audit/studies/{SHARED.study}")
    assert trail["destinations"] == everything["destinations"]
    assert {d["partner_id"]: d["stored"] for d in trail["destinations"]} == {"research-a": 1, "care-b": 1}
    status, body = _get(app, "k-trust-a", f"/audit/studies/{OTHER.study}")
    assert (status, body) == (404, {"detail": "no audit records for this study"}), "exactly like an unknown study"
    assert _get(app, "k-all", f"/audit/studies/{OTHER.study}")[0] == 200, "the study exists"


def test_a_partners_key_sees_only_its_part_of_a_study_shared_with_others(app: TestClient) -> None:
    everything = _get(app, "k-all", f"/audit/studies/{SHARED.study}")[1]
    status, trail = _get(app, "k-care-b", f"/audit/studies/{SHARED.study}")
    assert status == 200 and len(trail["events"]) < len(everything["events"])
    partners = {e["partner_id"] or e["requested_partner_id"] for e in trail["events"]}
    assert partners == {"care-b"}
    assert [d["partner_id"] for d in trail["destinations"]] == ["care-b"]
    assert _get(app, "k-care-b", f"/audit/studies/{OTHER.study}")[0] == 404


def test_events_are_forced_to_the_scope_and_naming_another_is_a_denial(app: TestClient) -> None:
    status, page = _get(app, "k-trust-a", "/audit/events", limit="1000")
    assert status == 200 and page["events"] and {e["source_org"] for e in page["events"]} == {"trust-a"}
    status, body = _get(app, "k-trust-a", "/audit/events", org="trust-z")
    assert status == 403 and "org:trust-a" in body["detail"], "a denial, not an empty page"
    assert _get(app, "k-trust-a", "/audit/events", org="trust-a")[0] == 200
    status, page = _get(app, "k-care-b", "/audit/events", limit="1000")
    assert {e["partner_id"] for e in page["events"]} == {"care-b"}
    assert _get(app, "k-care-b", "/audit/events", partner="ai-c")[0] == 403
    status, page = _get(app, "k-trust-a", "/audit/events", partner="ai-c")
    assert status == 200 and page["events"] == [], "another org's partner holds nothing of trust-a"


def test_aggregates_are_restricted_to_the_scope_or_refused(app: TestClient) -> None:
    status, vols = _get(app, "k-trust-a", "/audit/volumes", by="org")
    assert status == 200 and {d["key"] for d in vols["days"]} == {"trust-a"}
    assert _get(app, "k-trust-a", "/audit/volumes", by="org", key="trust-z")[0] == 403
    assert _get(app, "k-trust-a", "/audit/volumes", by="partner")[0] == 403
    assert _get(app, "k-trust-a", "/audit/turnaround")[0] == 403
    status, vols = _get(app, "k-care-b", "/audit/volumes", by="partner")
    assert status == 200 and {d["key"] for d in vols["days"]} == {"care-b"}
    status, turn = _get(app, "k-care-b", "/audit/turnaround")
    assert status == 200 and [p["partner_id"] for p in turn["partners"]] == ["care-b"]
    assert _get(app, "k-care-b", "/audit/turnaround", partner="research-a")[0] == 403
    assert _get(app, "k-trust-z", "/audit/quarantines")[1]["days"] == [], "trust-a's quarantine is not trust-z's"
    status, vols = _get(app, "k-all", "/audit/volumes", by="org")
    assert status == 200 and {d["key"] for d in vols["days"]} == {"trust-a", "trust-z"}
    assert _get(app, "k-all", "/audit/summary")[0] == 200 and _get(app, "k-all", "/audit/quarantines")[0] == 200


def test_a_scoped_key_gets_the_summary_and_quarantines_of_what_it_sees(app: TestClient) -> None:
    """Kept per organisation and per partner (`xs:` counters): a scoped key's own figures, nothing of
    others'; everything's key still sees all."""
    status, mine = _get(app, "k-trust-a", "/audit/summary")
    assert status == 200 and mine["delivered_by_partner"] == {"care-b": 1, "research-a": 1}
    assert mine["events_by_type"]["ingested"] == 1 and mine["quarantined_by_reason"] == {"no-route": 1}
    status, theirs = _get(app, "k-trust-z", "/audit/summary")
    assert status == 200 and theirs["delivered_by_partner"] == {"ai-c": 1} and theirs["quarantined_by_reason"] == {}
    status, partner = _get(app, "k-care-b", "/audit/summary")
    assert status == 200 and partner["delivered_by_partner"] == {"care-b": 1}
    assert "ai-c" not in partner["delivered_by_partner"] and "research-a" not in partner["delivered_by_partner"]
    status, everything = _get(app, "k-all", "/audit/summary")
    assert everything["delivered_by_partner"] == {"ai-c": 1, "care-b": 1, "research-a": 1}
    status, days = _get(app, "k-trust-a", "/audit/quarantines")
    assert status == 200 and [(d["stage"], d["reason"], d["count"]) for d in days["days"]] == [
        ("routing", "no-route", 1)
    ]


def test_every_query_is_recorded_with_who_asked_and_the_outcome(app: TestClient, log: MemoryAccessLog) -> None:
    _get(app, "k-trust-a", "/audit/events", org="trust-z")
    _get(app, "k-all", f"/audit/studies/{SHARED.study}")
    _get(app, "wrong", "/audit/summary")
    app.get("/healthz")
    denied, answered, anonymous = log.entries
    assert (denied.analyst_id, denied.scope, denied.status, denied.params) == (
        "ola",
        "org:trust-a",
        403,
        {"org": "trust-z"},
    )
    assert (answered.analyst_id, answered.path, answered.status) == ("ann", f"/audit/studies/{SHARED.study}", 200)
    assert (anonymous.analyst_id, anonymous.status) == (None, 401)
    doc = answered.document()
    assert doc["_id"].startswith("query:") and doc["outcome"] == 0
    assert (doc["event_type"]["code"], doc["event_id"]["code"]) == ("110112", "110101")
    assert denied.document()["outcome"] == 4


def test_a_query_whose_access_record_cannot_be_stored_is_not_answered() -> None:
    class Failing:
        def record(self, entry: AccessEntry) -> None:
            raise TransientError("down")

    client = TestClient(create_app(_store(), KEYS.get, Failing()))
    assert _get(client, "k-all", "/audit/events")[0] == 503


def test_the_analysts_page_is_served_without_a_key_and_loads_nothing_from_elsewhere() -> None:
    client = TestClient(create_app(_store(), KEYS.get, MemoryAccessLog()))
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css"):
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200 and "http://" not in asset.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in asset.text
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/ui/secrets.txt").status_code == 404
    assert client.get("/ui/..%2Fapi.py").status_code == 404


def test_a_partners_key_never_sees_the_uids_a_deidentified_copy_was_made_from() -> None:
    """Its prepared and outcome records carried the received study, series and SOP UIDs: a research
    partner holding such a key could link its copy back to the identifiable original. A care transfer's
    records keep them (the partner received those very UIDs)."""
    copy = Instance(study="1.2.826.0.1.9.1", series="1.2.826.0.1.9.1.1", sop="1.2.826.0.1.9.1.1.1")
    care = Instance(study="1.2.826.0.1.8.1", series="1.2.826.0.1.8.1.1", sop="1.2.826.0.1.8.1.1.1")
    second = Instance(study=copy.study, series=copy.series, sop="1.2.826.0.1.9.1.1.2")
    messages = [
        *journey(TOPICS, copy, partner="lab-r"),
        *journey(TOPICS, second, partner="lab-r", t0_ms=T0_MS + 500),
        *journey(TOPICS, care, partner="lab-r", deidentified=False),
    ]
    store = InMemoryAuditStore()
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    keys = {"k-lab": Analyst("lab", scope=Scope.parse("partner:lab-r")), "k-all": Analyst("ann")}
    client = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-lab"})
    remapped = copy.remapped()
    bodies = [
        client.get(f"/audit/studies/{remapped.study}").text,
        client.get("/audit/events").text,
        *(client.get("/audit/export/events", params={"format": f}).text for f in ("json", "dicom-xml", "fhir")),
        *(client.get(f"/audit/export/studies/{remapped.study}", params={"format": f}).text for f in ("json", "fhir")),
    ]
    for body in bodies:
        assert remapped.study in body or remapped.sop in body
        assert copy.study not in body and copy.series not in body and copy.sop not in body
    listed = client.get("/audit/events").json()["events"]
    assert {e["event_type"] for e in listed if e["study_uid"] == care.study} == {"routed", "prepared", "outcome"}
    # The trail's figures still count every instance, hidden UIDs or not.
    everything_trail = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-all"})
    for uid in (remapped.study, care.study):
        mine = client.get(f"/audit/studies/{uid}").json()
        theirs = everything_trail.get(f"/audit/studies/{uid}").json()
        assert mine["destinations"] == theirs["destinations"], uid
    everything = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-all"})
    assert copy.sop in everything.get("/audit/events").text  # a key that sees everything sees them


def test_a_partners_key_asking_by_the_original_of_its_copy_gets_a_404() -> None:
    """The trail found by the original UID answered 200 with the copy's UID: a research partner could
    confirm a guessed original and link it to the copy it holds; a wrong guess was a 404, an oracle."""
    copy = Instance(study="1.2.826.0.1.9.1", series="1.2.826.0.1.9.1.1", sop="1.2.826.0.1.9.1.1.1")
    care = Instance(study="1.2.826.0.1.8.1", series="1.2.826.0.1.8.1.1", sop="1.2.826.0.1.8.1.1.1")
    messages = [*journey(TOPICS, copy, partner="lab-r"), *journey(TOPICS, care, partner="lab-r", deidentified=False)]
    store = InMemoryAuditStore()
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    keys = {"k-lab": Analyst("lab", scope=Scope.parse("partner:lab-r")), "k-all": Analyst("ann")}
    lab = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-lab"})
    everything = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-all"})
    for path in (f"/audit/studies/{copy.study}", f"/audit/export/studies/{copy.study}"):
        assert everything.get(path).status_code == 200, "the study is known"
        answer = lab.get(path)
        assert answer.status_code == 404 and copy.remapped().study not in answer.text, path
    assert lab.get(f"/audit/studies/{copy.remapped().study}").status_code == 200, "by the UID it was given"
    assert lab.get(f"/audit/studies/{care.study}").status_code == 200, "a care transfer's UIDs are its own"
    # Nor by a receipt of its own naming the guessed original: its receipts are its words, not imx's.
    forged = pb.DeliveryReceipt(
        meta=pb.EventMeta(event_id="forged"), instance=copy.ref(), status=pb.STORE_STATUS_STORED
    )
    message = OutgoingMessage(TOPICS.receipts("lab-r"), forged.SerializeToString(), b"k", {})
    store.insert([build_record(incoming(message), TOPICS, NOW)])
    answer = lab.get(f"/audit/studies/{copy.study}")
    assert answer.status_code == 404 and copy.remapped().study not in answer.text
    # Nor by a retrieval it asked for by that UID (recorded with the UID of its path, found or not).
    asked = pb.PartnerRetrieval(
        meta=pb.EventMeta(event_id="asked"), partner_id="lab-r", study_instance_uid=copy.study, http_status=404
    )
    message = OutgoingMessage(TOPICS.access, asked.SerializeToString(), b"k", {})
    store.insert([build_record(incoming(message), TOPICS, NOW)])
    answer = lab.get(f"/audit/studies/{copy.study}")
    assert answer.status_code == 404 and copy.remapped().study not in answer.text


def _expired(partner: str, delivered: Instance, source: Instance | None = None) -> OutgoingMessage:
    """Delivery's outcome for `delivered`, sent to `partner`, expired from its feed unread (`source`: the
    original it was made from; none for a care transfer, which names no source)."""
    item = DeliveredInstance(
        partner_id=partner,
        study_uid=delivered.study,
        series_uid=delivered.series,
        sop_uid=delivered.sop,
        sop_class_uid="1.2",
        transfer_syntax_uid="1.2",
        sha256="x",
        size=1,
        delivery_id=f"d-{partner}",
        source_study_uid=source.study if source else "",
        source_sop_uid=source.sop if source else "",
        source_org="trust-a",
        route_id="route-1",
        ingested_at_ms=T0_MS,
    )
    return expired_outcome(item, TOPICS, lambda: T0_MS + 60_000)


def test_a_partners_key_does_not_see_the_original_through_the_expiry_of_an_unread_copy() -> None:
    """Delivery's outcome for a delivery that expired from the feed unread names no profile, and named
    the original's study and SOP UIDs beside the copy's: it was taken for a care transfer's, shown whole,
    and opened the original's trail. A partner could bring it about by not reading its feed."""
    copy = Instance(study="1.2.826.0.1.9.1", series="1.2.826.0.1.9.1.1", sop="1.2.826.0.1.9.1.1.1")
    remapped = copy.remapped()
    expired = _expired("lab-r", remapped, source=copy)
    messages = [*journey(TOPICS, copy, partner="lab-r"), expired]
    store = InMemoryAuditStore()
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    keys = {"k-lab": Analyst("lab", scope=Scope.parse("partner:lab-r"))}
    lab = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-lab"})
    outcomes = lab.get("/audit/events", params={"event_type": "outcome"}).json()["events"]
    assert "expired-unread" in {e["detail"] for e in outcomes}, "the expiry is shown"
    bodies = [
        lab.get("/audit/events").text,
        lab.get(f"/audit/studies/{remapped.study}").text,
        *(lab.get("/audit/export/events", params={"format": f}).text for f in ("json", "dicom-xml", "fhir")),
        *(lab.get(f"/audit/export/studies/{remapped.study}", params={"format": f}).text for f in ("json", "fhir")),
    ]
    for body in bodies:
        assert copy.study not in body and copy.sop not in body
    assert lab.get(f"/audit/studies/{copy.study}").status_code == 404


def test_a_care_partner_sees_the_uids_of_its_own_expired_delivery() -> None:
    """A care transfer's expiry names no received series; its study and instance are the partner's own."""
    care = Instance(study="1.2.826.0.1.8.1", series="1.2.826.0.1.8.1.1", sop="1.2.826.0.1.8.1.1.1")
    messages = [*journey(TOPICS, care, partner="care-b", deidentified=False), _expired("care-b", care)]
    store = InMemoryAuditStore()
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    keys = {"k-care": Analyst("pia", scope=Scope.parse("partner:care-b"))}
    client = TestClient(create_app(store, keys.get), headers={"Authorization": "Bearer k-care"})
    outcomes = client.get("/audit/events", params={"event_type": "outcome"}).json()["events"]
    [expiry] = [e for e in outcomes if e["detail"] == "expired-unread"]
    assert (expiry["study_uid"], expiry["sop_uid"]) == (care.study, care.sop)

"""Records exported as DICOM audit messages (PS3.15 A.5.1) and FHIR R4 AuditEvents, over HTTP too."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from services.audit.api import create_app
from services.audit.exports import (
    DCM_SYSTEM,
    audit_message_xml,
    audit_messages_xml,
    fhir_audit_event,
    fhir_bundle,
)
from services.audit.records import AuditRecord, build_record
from services.common.topics import Topics
from tests.unit.audit.builders import PHI_DESCRIPTION, T0_MS, Instance, incoming, journey, quarantined
from tests.unit.audit.fake_store import InMemoryAuditStore

TOPICS = Topics("t-exp.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
STUDY = Instance()
OTHER = Instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1")
KEY = "imx_audit_export-key"


def _records() -> list[AuditRecord]:
    messages = [*journey(TOPICS, STUDY), quarantined(TOPICS, OTHER, T0_MS + 5000)]
    return [build_record(incoming(m), TOPICS, NOW) for m in messages]


def test_each_record_is_a_wellformed_audit_message_with_the_required_parts() -> None:
    for record in _records():
        root = ET.fromstring(audit_message_xml(record))
        assert root.tag == "AuditMessage"
        ident = root.find("EventIdentification")
        assert ident is not None
        assert ident.get("EventActionCode") in {"C", "R", "U", "D", "E"}
        assert ident.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ident.get("EventDateTime", ""))
        event_id = ident.find("EventID")
        assert event_id is not None and event_id.get("codeSystemName") == "DCM"
        assert event_id.get("csd-code", "").startswith("1101") and event_id.get("originalText")
        participants = root.findall("ActiveParticipant")
        assert participants and all(
            p.get("UserIsRequestor") in {"true", "false"} and p.get("UserID") for p in participants
        )
        source = root.find("AuditSourceIdentification")
        assert source is not None and source.get("AuditSourceID", "").startswith("imx")
        # the schema's order: event, participants, source, objects
        tags = [child.tag for child in root]
        assert tags.index("AuditSourceIdentification") > max(i for i, t in enumerate(tags) if t == "ActiveParticipant")


def test_the_study_is_identified_by_its_uid_as_a_system_object() -> None:
    outcome = _records()[3]
    root = ET.fromstring(audit_message_xml(outcome))
    assert root.find("EventIdentification/EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    objects = root.findall("ParticipantObjectIdentification")
    assert [o.get("ParticipantObjectID") for o in objects] == [STUDY.study, STUDY.remapped().study]
    for obj in objects:
        assert (obj.get("ParticipantObjectTypeCode"), obj.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
        assert obj.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]
    assert objects[1].findtext("Anonymized") == "true"
    details = {
        d.get("type"): base64.b64decode(d.get("value", "")).decode() for d in objects[0].iter("ParticipantObjectDetail")
    }
    assert details["partner_id"] == "research-a" and details["route_id"] == "route-1"


def test_no_patient_identity_leaves_in_any_export() -> None:
    records = _records()
    for text in (audit_messages_xml(records), json.dumps(fhir_bundle(records))):
        assert PHI_DESCRIPTION not in text and "DOE" not in text
        assert 'ParticipantObjectTypeCode="1"' not in text


def test_a_list_is_one_wrapper_of_complete_messages() -> None:
    records = _records()
    root = ET.fromstring(audit_messages_xml(records))
    assert root.tag == "AuditMessages" and len(root) == len(records)
    assert ET.tostring(root[0]) == ET.tostring(ET.fromstring(audit_message_xml(records[0])))


def test_fhir_audit_events_have_the_required_r4_elements() -> None:
    for record in _records():
        event = fhir_audit_event(record)
        assert event["resourceType"] == "AuditEvent"
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", event["id"])
        assert event["type"]["system"] == DCM_SYSTEM and event["type"]["code"].startswith("1101")
        assert event["action"] in {"C", "R", "U", "D", "E"} and event["outcome"] in {"0", "4", "8", "12"}
        assert event["recorded"].endswith("Z")
        assert event["agent"] and all(isinstance(a["requestor"], bool) and a["who"] for a in event["agent"])
        assert event["source"]["observer"] and event["source"]["type"][0]["code"] == "4"
        assert any(s["code"] == record["event_type"] for s in event["subtype"])
        for entity in event.get("entity", []):
            identifier = entity["what"]["identifier"]
            assert identifier["system"] == "urn:dicom:uid" and identifier["value"].startswith("urn:oid:")
            assert identifier["type"]["coding"][0]["code"] == "110180"
    bundle = fhir_bundle(_records())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"])
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])


def test_the_same_record_always_gets_the_same_fhir_id() -> None:
    record = _records()[0]
    assert fhir_audit_event(record)["id"] == fhir_audit_event(dict(record))["id"]  # type: ignore[arg-type]


@pytest.fixture
def client() -> TestClient:
    store = InMemoryAuditStore()
    store.insert(_records())
    app = create_app(store, lambda key: "analyst-1" if key == KEY else None)
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def test_exports_need_a_key(client: TestClient) -> None:
    for path in ("/audit/export/events?format=fhir", f"/audit/export/studies/{STUDY.study}?format=dicom-xml"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 401


def test_events_export_pages_in_each_format(client: TestClient) -> None:
    xml = client.get("/audit/export/events", params={"format": "dicom-xml", "limit": 4})
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    assert len(ET.fromstring(xml.text)) == 4
    cursor = xml.headers["imx-next-cursor"]
    rest = client.get("/audit/export/events", params={"format": "dicom-xml", "limit": 4, "cursor": cursor})
    assert len(ET.fromstring(rest.text)) == 2 and "imx-next-cursor" not in rest.headers
    fhir = client.get("/audit/export/events", params={"format": "fhir", "limit": 4})
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    bundle = fhir.json()
    assert len(bundle["entry"]) == 4 and "cursor=" in bundle["link"][0]["url"]
    plain = client.get("/audit/export/events", params={"format": "json", "event_type": "quarantined"}).json()
    assert [e["event_type"] for e in plain["events"]] == ["quarantined"]
    assert client.get("/audit/export/events", params={"format": "csv"}).status_code == 422


def test_study_export_holds_its_trail_only(client: TestClient) -> None:
    xml = client.get(f"/audit/export/studies/{STUDY.study}", params={"format": "dicom-xml"})
    ids = [m.find("EventIdentification/EventID").get("csd-code") for m in ET.fromstring(xml.text)]  # type: ignore[union-attr]
    assert ids == ["110107", "110103", "110103", "110104", "110104"]
    fhir = client.get(f"/audit/export/studies/{STUDY.study}", params={"format": "fhir"}).json()
    assert len(fhir["entry"]) == 5
    assert client.get(f"/audit/export/studies/{STUDY.study}").json()["study_uid"] == STUDY.study
    assert client.get("/audit/export/studies/9.9.9", params={"format": "fhir"}).status_code == 404


def test_a_partners_receipt_with_control_characters_still_exports_as_xml() -> None:
    """A receipt's detail is the partner's text: one \\x01 made every export page holding it, and the
    syslog message, something no XML parser reads."""
    from services.common.events import event_message
    from services.proto_gen.imx.v1 import events_pb2

    messages = journey(TOPICS, STUDY, partner="care-b", delivered=False)
    receipt = events_pb2.DeliveryReceipt.FromString(messages[4].value)
    receipt.detail = "0xA700 \x01\x1b[31m peer said \ufffe"
    messages[4] = event_message(TOPICS.receipts("care-b"), receipt, STUDY.study)
    records = [build_record(incoming(m), TOPICS, NOW) for m in messages]
    root = ET.fromstring(audit_messages_xml(records))
    said = [d for d in root.itertext() if "peer said" in d] + [
        v for e in root.iter() for v in e.attrib.values() if "peer said" in v
    ]
    assert said, "the detail is still exported"
    assert all("\x01" not in text and "\x1b" not in text for text in said)
    # FHIR strings take no control characters either: the bundle's XML form broke on them.
    fhir = json.dumps([fhir_audit_event(r) for r in records])
    assert "peer said" in fhir and "\\u0001" not in fhir and "\\u001b" not in fhir


def test_an_export_router_wired_without_the_key_check_refuses_rather_than_exports_everything() -> None:
    """The exports read the key's scope from the key check; missing, they answered unscoped."""
    from fastapi import FastAPI

    from services.audit.export_api import export_router

    app = FastAPI()
    app.state.audit_store = InMemoryAuditStore()
    app.include_router(export_router)
    answer = TestClient(app).get("/audit/export/events", params={"format": "json"})
    assert answer.status_code == 401

"""Audit records as DICOM audit messages (PS3.15 A.5.1) and as FHIR R4 AuditEvents (IHE BALP) (pure).

A list of records becomes one `<AuditMessages>` document holding one complete `<AuditMessage>` per
record. The wrapper is ours (the DICOM schema defines single messages only); each child is exactly
what `audit_message_xml` gives for its record and what the syslog forwarder sends. In FHIR a list is
a Bundle of type `collection`, one AuditEvent per record, ids derived from the record id.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from services.audit.records import AuditRecord
from services.audit.standard_events import Code, Participant, ParticipantObject, StandardEvent, standard_event

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
IMX_EVENT_TYPE_SYSTEM = "urn:imx:audit-event-type"
SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DEFAULT_SITE = "imx"
_ID_NAMESPACE = uuid.UUID("8c1b0f36-4a54-5b5e-9d7e-3e8f2f1a0c11")


def _instant(moment: datetime) -> str:
    """xsd:dateTime / FHIR instant, UTC with milliseconds (records hold milliseconds)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- DICOM PS3.15 A.5.1 AuditMessage ---------------------------------------------------------------


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.display}
    )


def _participant_xml(parent: ET.Element, p: Participant) -> None:
    element = ET.SubElement(
        parent, "ActiveParticipant", {"UserID": p.user_id, "UserIsRequestor": str(p.requestor).lower()}
    )
    if p.role is not None:
        _coded(element, "RoleIDCode", p.role)


def _object_xml(parent: ET.Element, obj: ParticipantObject) -> None:
    element = ET.SubElement(
        parent,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": obj.study_uid,
            "ParticipantObjectTypeCode": str(obj.type_code),
            "ParticipantObjectTypeCodeRole": str(obj.role),
        },
    )
    _coded(element, "ParticipantObjectIDTypeCode", obj.id_type)
    for name, value in obj.details:
        # ValuePair values are xs:base64Binary in the schema.
        ET.SubElement(
            element, "ParticipantObjectDetail", {"type": name, "value": base64.b64encode(value.encode()).decode()}
        )
    if obj.description:
        ET.SubElement(element, "ParticipantObjectDescription").text = obj.description
    if obj.anonymized is not None:
        ET.SubElement(element, "Anonymized").text = str(obj.anonymized).lower()


def audit_message_element(event: StandardEvent, site: str = DEFAULT_SITE) -> ET.Element:
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            "EventDateTime": _instant(event.occurred_at),
            "EventOutcomeIndicator": str(event.outcome),
        },
    )
    _coded(identification, "EventID", event.event_id)
    for type_code in event.type_codes:
        _coded(identification, "EventTypeCode", type_code)
    if event.outcome_description:
        ET.SubElement(identification, "EventOutcomeDescription").text = event.outcome_description
    for participant in event.participants:
        _participant_xml(message, participant)
    source = ET.SubElement(
        message, "AuditSourceIdentification", {"AuditEnterpriseSiteID": site, "AuditSourceID": event.source_id}
    )
    _coded(source, "AuditSourceTypeCode", Code("4", "Application Server process tier in a multi-tier system"))
    for obj in event.objects:
        _object_xml(message, obj)
    return _xml_safe(message)


# What XML 1.0 (2.2) does not allow in a document at all, escaped or not. A receipt's detail is written by
# the partner: one such character made every export page holding it, and the syslog message, unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text_safe(text: str) -> str:
    """`text` with what XML 1.0 cannot carry replaced by U+FFFD: FHIR strings take no control characters
    either (but tab, CR and LF), and a partner's receipt detail with one broke the bundle's XML form."""
    return _NOT_XML.sub("\ufffd", text) if _NOT_XML.search(text) else text


def _xml_safe(root: ET.Element) -> ET.Element:
    """`root` with every character XML cannot carry in its text and attributes replaced by U+FFFD."""
    for element in root.iter():
        if element.text and _NOT_XML.search(element.text):
            element.text = _NOT_XML.sub("\ufffd", element.text)
        for name, value in element.attrib.items():
            if _NOT_XML.search(value):
                element.set(name, _NOT_XML.sub("\ufffd", value))
    return root


def audit_message_xml(record: AuditRecord, site: str = DEFAULT_SITE) -> str:
    """One record as a complete DICOM AuditMessage document (UTF-8, with declaration)."""
    element = audit_message_element(standard_event(record), site)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(element, encoding="unicode")


def audit_messages_xml(records: Sequence[AuditRecord], site: str = DEFAULT_SITE) -> str:
    root = ET.Element("AuditMessages")
    for record in records:
        root.append(audit_message_element(standard_event(record), site))
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


# --- FHIR R4 AuditEvent (IHE BALP) -----------------------------------------------------------------


def _coding(code: Code) -> dict[str, str]:
    system = DCM_SYSTEM if code.system == "DCM" else code.system
    return {"system": system, "code": code.code, "display": code.display}


def resource_id(record_id: str) -> str:
    """FHIR ids allow [A-Za-z0-9-.]{1,64}; a record id has a colon, so a name-based UUID stands in."""
    return str(uuid.uuid5(_ID_NAMESPACE, record_id))


def _agent(p: Participant) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "who": {"identifier": {"value": p.user_id}, "display": p.user_id},
        "requestor": p.requestor,
    }
    if p.role is not None:
        agent["type"] = {"coding": [_coding(p.role)]}
    return agent


def _entity(obj: ParticipantObject) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {
            "identifier": {
                "type": {"coding": [_coding(obj.id_type)]},
                "system": DICOM_UID_SYSTEM,
                "value": f"urn:oid:{obj.study_uid}",
            }
        },
        "type": {"system": ENTITY_TYPE_SYSTEM, "code": str(obj.type_code), "display": "System Object"},
        "role": {"system": OBJECT_ROLE_SYSTEM, "code": str(obj.role), "display": "Report"},
    }
    details = [{"type": name, "valueString": _text_safe(value)} for name, value in obj.details]
    if obj.anonymized is not None:
        details.append({"type": "anonymized", "valueString": str(obj.anonymized).lower()})
    if details:
        entity["detail"] = details
    if obj.description:
        entity["description"] = obj.description
    return entity


def fhir_audit_event(record: AuditRecord, site: str = DEFAULT_SITE) -> dict[str, Any]:
    """One record as a FHIR R4 AuditEvent: type is the DICOM EventID (DCM), subtype the DICOM event
    type codes and imx's own event type, the period the event's time, `recorded` when audit stored it."""
    event = standard_event(record)
    subtype = [_coding(code) for code in event.type_codes]
    subtype.append({"system": IMX_EVENT_TYPE_SYSTEM, "code": event.imx_event_type})
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": resource_id(event.record_id),
        "type": _coding(event.event_id),
        "subtype": subtype,
        "action": event.action,
        "period": {"start": _instant(event.occurred_at), "end": _instant(event.occurred_at)},
        "recorded": _instant(event.recorded_at),
        "outcome": str(event.outcome),
        "agent": [_agent(p) for p in event.participants],
        "source": {
            "site": site,
            "observer": {"identifier": {"value": event.source_id}, "display": event.source_id},
            "type": [{"system": SOURCE_TYPE_SYSTEM, "code": "4", "display": "Application Server"}],
        },
        "entity": [_entity(obj) for obj in event.objects],
    }
    if event.outcome_description:
        resource["outcomeDesc"] = _text_safe(event.outcome_description)
    if not resource["entity"]:
        del resource["entity"]
    return resource


def fhir_bundle(
    records: Sequence[AuditRecord], site: str = DEFAULT_SITE, next_url: str | None = None
) -> dict[str, Any]:
    entries = [fhir_audit_event(r, site) for r in records]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{e['id']}", "resource": e} for e in entries],
    }
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def fhir_bundle_json(records: Sequence[AuditRecord], site: str = DEFAULT_SITE, next_url: str | None = None) -> str:
    return json.dumps(fhir_bundle(records, site, next_url), separators=(",", ":"))

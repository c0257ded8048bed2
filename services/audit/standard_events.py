"""An audit record in the terms of DICOM PS3.15 A.5: the audit message it stands for (pure).

One record → one `StandardEvent`: EventID, EventActionCode, EventDateTime, EventOutcomeIndicator,
the active participants (who sent, who received, and which one asked), the audit source and the
participant objects (studies, by Study Instance UID). Renderers (`exports.py`) turn it into the DICOM
AuditMessage XML (A.5.1) or a FHIR AuditEvent (IHE BALP).

No patient identity: imx records hold no Patient ID or name by design, so the Patient participant
object A.5.3 asks for is left out and the study's UID (the de-identified copy's for what a partner
holds) is the trail's only, pseudonymous, reference. The mapping table is in services/audit/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.audit.records import AuditRecord, EventType

DCM = "DCM"


@dataclass(frozen=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText in the DICOM schema)."""

    code: str
    display: str
    system: str = DCM


# PS3.16 CID 400 Audit Event ID.
AUDIT_LOG_USED = Code("110101", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
DATA_EXPORT = Code("110106", "Export")
DATA_IMPORT = Code("110107", "Import")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")

# PS3.16 CID 402 Audit Active Participant Role ID, CID 403/404 event type codes.
SOURCE_ROLE = Code("110153", "Source Role ID")
DESTINATION_ROLE = Code("110152", "Destination Role ID")
APPLICATION_ROLE = Code("110150", "Application")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
LOGIN = Code("110122", "Login")
STUDY_INSTANCE_UID = Code("110180", "Study Instance UID")

# EventActionCode (A.5.1): Create, Read, Update, Delete, Execute.
CREATE, READ, EXECUTE = "C", "R", "E"

# EventOutcomeIndicator (A.5.1).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

# ParticipantObjectTypeCode 2 System Object, ParticipantObjectTypeCodeRole 3 Report: a study (A.5.3).
SYSTEM_OBJECT, REPORT_ROLE = 2, 3

# Quarantine reasons that are a security matter (A.5.3.11 Security Alert), with their event type code;
# every other quarantine is the failed form of the stage's ordinary event.
SECURITY_REASONS: dict[str, Code] = {
    "unknown-calling-ae": NODE_AUTHENTICATION,
    "unknown-sender": NODE_AUTHENTICATION,
    "unauthorised": USE_OF_RESTRICTED_FUNCTION,
    "forbidden": USE_OF_RESTRICTED_FUNCTION,
}

# PS3.15 A.5.3.11 takes its EventTypeCode from CID 403, which names no data-at-risk condition; this
# one is imx's own, under a private coding scheme designator (PS3.16 8.2: "99" + the organisation).
PARTNER_BACKLOG_RETENTION = Code("partner-backlog-retention", "Partner backlog nearing feed retention", "99IMX")
ALERT_TYPES: dict[str, Code] = {"partner-backlog-retention": PARTNER_BACKLOG_RETENTION}

IMX = "imx"  # the exchange itself, as a participant


@dataclass(frozen=True)
class Participant:
    """ActiveParticipant: an organisation, a partner or an imx service, never a person's identity."""

    user_id: str
    requestor: bool
    role: Code | None = None


@dataclass(frozen=True)
class ParticipantObject:
    """ParticipantObjectIdentification of a study (UIDs only)."""

    study_uid: str
    details: tuple[tuple[str, str], ...] = ()  # ParticipantObjectDetail type/value pairs
    description: str | None = None  # ParticipantObjectDescription: series, instance, modality
    anonymized: bool | None = None  # a de-identified copy (A.5.1 Anonymized)
    type_code: int = SYSTEM_OBJECT
    role: int = REPORT_ROLE
    id_type: Code = STUDY_INSTANCE_UID


@dataclass(frozen=True)
class StandardEvent:
    record_id: str
    imx_event_type: str
    event_id: Code
    action: str
    occurred_at: datetime
    recorded_at: datetime
    outcome: int
    outcome_description: str | None
    type_codes: tuple[Code, ...]
    participants: tuple[Participant, ...]
    source_id: str  # AuditSourceID: the imx component that saw the event
    objects: tuple[ParticipantObject, ...] = field(default=())


def _outcome_text(record: AuditRecord) -> str | None:
    parts = [f"{name}={record[name]}" for name in ("status", "reason", "detail") if record[name]]
    return " ".join(parts) or None


def _source_side(record: AuditRecord) -> Participant:
    return Participant(record["source_org"] or "unknown-org", True, SOURCE_ROLE)


def _partner(record: AuditRecord, requestor: bool) -> Participant:
    return Participant(record["partner_id"] or "unknown-partner", requestor, DESTINATION_ROLE)


def _imx(service: str, requestor: bool, role: Code) -> Participant:
    return Participant(f"{IMX}-{service}", requestor, role)


def _details(record: AuditRecord, *names: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name in names:
        value = record[name]  # type: ignore[literal-required]
        if value is not None:
            pairs.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return tuple(pairs)


def _description(series: str | None, sop: str | None, modality: str | None) -> str | None:
    parts = [f"{k}={v}" for k, v in (("modality", modality), ("series", series), ("instance", sop)) if v]
    return " ".join(parts) or None


_OBJECT_DETAILS = ("source_org", "channel", "partner_id", "route_id", "profile", "profile_version", "stage")


def study_objects(record: AuditRecord) -> tuple[ParticipantObject, ...]:
    """The study as received and, when it went out under other UIDs, the copy the partner holds."""
    objects = []
    details = (("record_id", record["_id"]), *_details(record, *_OBJECT_DETAILS))
    if record["study_uid"]:
        anonymized = False if record["deidentified"] is not None else None
        objects.append(
            ParticipantObject(
                record["study_uid"],
                details,
                _description(record["series_uid"], record["sop_uid"], record["modality"]),
                anonymized,
            )
        )
    if record["delivered_study_uid"] and record["delivered_study_uid"] != record["study_uid"]:
        deidentified = record["deidentified"]
        if deidentified is None and record["study_uid"] is not None:
            deidentified = True  # the UIDs were remapped, which only de-identification does
        objects.append(
            ParticipantObject(
                record["delivered_study_uid"],
                details,
                _description(record["delivered_series_uid"], record["delivered_sop_uid"], record["modality"]),
                deidentified,
            )
        )
    return tuple(objects)


def _failed_outcome(status: str | None) -> int:
    if status in {"delivered", "stored", "superseded", "study_complete"}:
        return SUCCESS
    if status in {"failed", "study_incomplete"}:
        return MINOR_FAILURE  # retried, or a manifest still waiting for instances
    return SERIOUS_FAILURE


def _http_outcome(status: str | None) -> int:
    code = int(status) if status and status.isdigit() else 0
    if 200 <= code < 400:
        return SUCCESS
    return MINOR_FAILURE if 400 <= code < 500 else SERIOUS_FAILURE


def _stage_event(stage: str | None) -> tuple[Code, str]:
    """The ordinary event of a pipeline stage, for its quarantines and dead letters."""
    if stage in {"ingest", "ingest-http", "c-store", "stow-rs"}:
        return DATA_IMPORT, CREATE
    if stage in {"delivery", "gateway", "dicomweb"}:
        return INSTANCES_TRANSFERRED, READ
    return INSTANCES_ACCESSED, READ


def _event(
    record: AuditRecord,
    event_id: Code,
    action: str,
    outcome: int,
    participants: tuple[Participant, ...],
    source: str,
    type_codes: tuple[Code, ...] = (),
) -> StandardEvent:
    return StandardEvent(
        record_id=record["_id"],
        imx_event_type=record["event_type"],
        event_id=event_id,
        action=action,
        occurred_at=record["occurred_at"],
        recorded_at=record["recorded_at"],
        outcome=outcome,
        outcome_description=_outcome_text(record),
        type_codes=type_codes,
        participants=participants,
        source_id=source,
        objects=study_objects(record),
    )


def standard_event(record: AuditRecord) -> StandardEvent:
    """The PS3.15 A.5 audit event of one imx audit record."""
    kind = record["event_type"]
    if kind == EventType.INGESTED:
        # A.5.3.3 Data Import: the study enters the exchange's security domain from a sending organisation.
        return _event(
            record,
            DATA_IMPORT,
            CREATE,
            SUCCESS,
            (_source_side(record), _imx("ingest", False, DESTINATION_ROLE)),
            f"{IMX}-ingest",
        )
    if kind == EventType.ROUTED:
        # A.5.3.2 DICOM Instances Accessed, Read: the routing rules read the instance's attributes.
        return _event(
            record, INSTANCES_ACCESSED, READ, SUCCESS, (_imx("routing", True, APPLICATION_ROLE),), "imx-routing"
        )
    if kind == EventType.PREPARED:
        # Instances Accessed, Create when de-identification made a new copy.
        action = CREATE if record["deidentified"] or record["delivered_study_uid"] else READ
        return _event(record, INSTANCES_ACCESSED, action, SUCCESS, (_imx("deid", True, APPLICATION_ROLE),), "imx-deid")
    if kind in (EventType.OUTCOME, EventType.RECEIPT):
        # A.5.3.5 Instances Transferred; "R" because the sender cannot know whether the receiver held copies.
        source = "imx-delivery" if kind == EventType.OUTCOME else f"imx-gateway:{record['partner_id'] or '-'}"
        participants = (_imx("delivery", True, SOURCE_ROLE), _partner(record, False))
        return _event(record, INSTANCES_TRANSFERRED, READ, _failed_outcome(record["status"]), participants, source)
    if kind == EventType.RETRIEVAL:
        return _retrieval_event(record)
    if kind == EventType.ALERT:
        # A.5.3.11 Security Alert, reported by the imx service that saw it about the partner concerned.
        # A warning before anything is lost: "Success implies an informative alert rather than a failure".
        service = record["stage"] or "pipeline"
        reason = record["reason"] or ""
        type_code = ALERT_TYPES.get(reason, Code(reason or "unknown", reason or "unknown", "99IMX"))
        participants = (_imx(service, True, APPLICATION_ROLE), _partner(record, False))
        return _event(record, SECURITY_ALERT, EXECUTE, SUCCESS, participants, f"imx-{service}", (type_code,))
    if kind == EventType.QUARANTINED:
        security = SECURITY_REASONS.get(record["reason"] or "")
        if security is not None:
            return _event(
                record,
                SECURITY_ALERT,
                EXECUTE,
                SERIOUS_FAILURE,
                (_source_side(record), _imx(record["stage"] or "pipeline", False, DESTINATION_ROLE)),
                f"imx-{record['stage'] or 'pipeline'}",
                (security,),
            )
        code, action = _stage_event(record["stage"])
        return _event(
            record,
            code,
            action,
            SERIOUS_FAILURE,
            _pipeline_participants(record),
            f"imx-{record['stage'] or 'pipeline'}",
        )
    if kind == EventType.DEAD_LETTER:
        # The stage's own event, failed: the input is parked until an operator replays it.
        code, action = _stage_event(record["stage"])
        return _event(
            record, code, action, MAJOR_FAILURE, _pipeline_participants(record), f"imx-{record['stage'] or 'pipeline'}"
        )
    raise ValueError(f"no DICOM audit event for event type {kind!r}")


def _pipeline_participants(record: AuditRecord) -> tuple[Participant, ...]:
    participants = [_imx(record["stage"] or "pipeline", True, APPLICATION_ROLE)]
    if record["source_org"]:
        participants.append(Participant(record["source_org"], False, SOURCE_ROLE))
    if record["partner_id"]:
        participants.append(_partner(record, False))
    return tuple(participants)


def _retrieval_event(record: AuditRecord) -> StandardEvent:
    """A partner's DICOMweb request: the partner asks (requestor), imx's DICOMweb service answers."""
    participants = (_partner(record, True), _imx("dicomweb", False, SOURCE_ROLE))
    status = record["status"]
    if status == "401":
        # A.5.3.12 User Authentication: a partner's credentials were refused.
        return _event(record, USER_AUTHENTICATION, EXECUTE, MINOR_FAILURE, participants, "imx-dicomweb", (LOGIN,))
    if status == "403":
        return _event(
            record, SECURITY_ALERT, EXECUTE, MINOR_FAILURE, participants, "imx-dicomweb", (USE_OF_RESTRICTED_FUNCTION,)
        )
    if record["reason"] == "query":
        return _event(record, QUERY, EXECUTE, _http_outcome(status), participants, "imx-dicomweb")  # A.5.3.10
    # A.5.3.4 Data Export: the instances leave the exchange for the partner's own systems.
    return _event(record, DATA_EXPORT, READ, _http_outcome(status), participants, "imx-dicomweb")

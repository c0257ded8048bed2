"""The STOW-RS response: a Store Instances Response Module in DICOM JSON (PS3.18 10.5.3, Annex F)
and the HTTP status that goes with it. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.ingest.acceptance import AcceptanceResult, Accepted, Duplicate
from services.ingest.status_codes import OUT_OF_RESOURCES, status_for_result

DICOM_JSON = "application/dicom+json"

# PS3.18 Table 10.5.3-1
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"

DicomJson = dict[str, Any]


@dataclass(frozen=True)
class InstanceOutcome:
    """One part of the request: its UIDs where known, and a FailureReason when it was not stored."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    failure_reason: int | None = None

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def outcome_of(result: AcceptanceResult) -> InstanceOutcome:
    if isinstance(result, Accepted | Duplicate):
        return InstanceOutcome(result.sop_class_uid, result.sop_instance_uid)
    return InstanceOutcome(result.sop_class_uid, result.sop_instance_uid, status_for_result(result))


def _uid(value: str) -> DicomJson:
    # An empty attribute has no "Value" in DICOM JSON (PS3.18 F.2.5); a failed part may have no UIDs.
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _item(outcome: InstanceOutcome) -> DicomJson:
    item: DicomJson = {
        REFERENCED_SOP_CLASS_UID: _uid(outcome.sop_class_uid),
        REFERENCED_SOP_INSTANCE_UID: _uid(outcome.sop_instance_uid),
    }
    if outcome.failure_reason is not None:
        item[FAILURE_REASON] = {"vr": "US", "Value": [outcome.failure_reason]}
    return item


def response_body(outcomes: Sequence[InstanceOutcome]) -> DicomJson:
    """Each sequence is present only when it has items (PS3.18 Table 10.5.3-1: required if any)."""
    body: DicomJson = {}
    stored = [_item(o) for o in outcomes if o.stored]
    failed = [_item(o) for o in outcomes if not o.stored]
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    return body


def http_status(outcomes: Sequence[InstanceOutcome]) -> int:
    """PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.

    When none was stored only because a dependency is down, 503 tells the client to retry the
    same request later (PS3.18 8.5 lists 503 Service Unavailable among the general statuses).
    """
    failures = [o.failure_reason for o in outcomes if o.failure_reason is not None]
    if not failures:
        return 200
    if len(failures) < len(outcomes):
        return 202
    if all(f == OUT_OF_RESOURCES for f in failures):
        return 503
    return 409

"""What a sender is told, as DIMSE status codes (PS3.4 Annex B, PS3.7 Annex C).

C-STORE answers with these directly; STOW-RS uses the same codes as FailureReason (0008,1197)
(PS3.18 Table 10.5.3-1 refers to the PS3.4 storage statuses).
"""

from __future__ import annotations

from typing import Final

from services.ingest.acceptance import SOP_MISMATCH, STUDY_MISMATCH, TOO_LARGE, AcceptanceResult, Accepted, Duplicate

SUCCESS: Final = 0x0000
# PS3.4 Table B.2-1: "Refused: Out of Resources" (A7xx). A700 = try again later; A701 = this
# instance is over our size limit (an A7xx sub-code, so it stays in the standard's meaning).
OUT_OF_RESOURCES: Final = 0xA700
OUT_OF_RESOURCES_TOO_LARGE: Final = 0xA701
# PS3.4 Table B.2-1: "Error: Data Set does not match SOP Class" (A9xx).
DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
# PS3.4 Table B.2-1: "Error: Cannot understand" (Cxxx).
CANNOT_UNDERSTAND: Final = 0xC000
# PS3.7 Table C.4-1 general status: "Processing failure".
PROCESSING_FAILURE: Final = 0x0110
# PS3.7 Table C.4-1 general status: "Refused: Not authorized".
NOT_AUTHORIZED: Final = 0x0124

_REJECTION_STATUS: Final[dict[str, int]] = {
    "not-dicom": CANNOT_UNDERSTAND,
    "truncated": CANNOT_UNDERSTAND,
    "missing-uid": DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    "invalid-uid": DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    "dicomdir": DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    # Limits on the work one input may cause (services.common.dicom.header.InputLimits).
    "too-deep": DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    "too-many-elements": DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    "inflated-too-large": OUT_OF_RESOURCES_TOO_LARGE,
    # PS3.18 10.5.3: an instance of another study than the one in the target URL is an A900 failure.
    STUDY_MISMATCH: DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    # The data set is not the instance its C-STORE command named (PS3.4 B.2.3: A900).
    SOP_MISMATCH: DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    TOO_LARGE: OUT_OF_RESOURCES_TOO_LARGE,
}


def status_for_result(result: AcceptanceResult) -> int:
    """Success only for an instance that is stored and published (now or earlier)."""
    if isinstance(result, Accepted | Duplicate):
        return SUCCESS
    return _REJECTION_STATUS.get(result.reason, CANNOT_UNDERSTAND)


def is_transient(status: int) -> bool:
    """Statuses a sender should retry later."""
    return status == OUT_OF_RESOURCES


def error_comment(result: AcceptanceResult) -> str:
    """Error Comment (0000,0902) for a failed C-STORE: the machine-readable reason, never a value.

    PS3.7 limits it to 64 characters of the LO character repertoire.
    """
    if isinstance(result, Accepted | Duplicate):
        return ""
    text = f"{result.reason}: {result.detail}" if result.detail else result.reason
    return text[:64]

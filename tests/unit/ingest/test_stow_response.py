"""The STOW-RS response module (PS3.18 Table 10.5.3-1) and its HTTP status."""

from __future__ import annotations

import pytest

from services.ingest.acceptance import Accepted, Duplicate, Rejected
from services.ingest.stow_response import InstanceOutcome, http_status, outcome_of, response_body

STORED = InstanceOutcome("1.2.840.10008.5.1.4.1.1.4", "2.25.1")
FAILED = InstanceOutcome("", "", 0xC000)
BUSY = InstanceOutcome("", "", 0xA700)


def test_stored_instances_are_listed_in_referenced_sop_sequence() -> None:
    body = response_body([STORED])
    assert body == {
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.4"]},
                    "00081155": {"vr": "UI", "Value": ["2.25.1"]},
                }
            ],
        }
    }


def test_failed_instances_carry_a_failure_reason_and_empty_uids_have_no_value() -> None:
    body = response_body([STORED, FAILED])
    [failed] = body["00081198"]["Value"]
    assert failed == {"00081150": {"vr": "UI"}, "00081155": {"vr": "UI"}, "00081197": {"vr": "US", "Value": [0xC000]}}
    assert len(body["00081199"]["Value"]) == 1


def test_sequences_without_items_are_left_out() -> None:
    assert "00081199" not in response_body([FAILED])
    assert "00081198" not in response_body([STORED])


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [([STORED, STORED], 200), ([STORED, FAILED], 202), ([FAILED], 409), ([FAILED, BUSY], 409), ([BUSY, BUSY], 503)],
)
def test_http_status_follows_ps3_18(outcomes: list[InstanceOutcome], status: int) -> None:
    assert http_status(outcomes) == status


def test_outcomes_of_acceptance_results() -> None:
    assert outcome_of(Accepted("e", "s", "c", "i", "h")) == InstanceOutcome("c", "i")
    assert outcome_of(Duplicate("e", "s", "c", "i", "h")) == InstanceOutcome("c", "i")
    assert outcome_of(Rejected("study-mismatch", "StudyInstanceUID", False, "s", "c", "i")) == InstanceOutcome(
        "c", "i", 0xA900
    )
    assert outcome_of(Rejected("not-dicom", quarantined=True)).failure_reason == 0xC000

"""What C-STORE senders are told (PS3.4 Table B.2-1, PS3.7 Annex C)."""

from __future__ import annotations

import pytest

from services.ingest.acceptance import Accepted, Duplicate, Rejected
from services.ingest.status_codes import error_comment, is_transient, status_for_result


def test_accepted_and_duplicate_are_success() -> None:
    assert status_for_result(Accepted("e", "s", "c", "i", "h")) == 0x0000
    assert status_for_result(Duplicate("e", "s", "c", "i", "h")) == 0x0000


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("not-dicom", 0xC000),
        ("truncated", 0xC000),
        ("missing-uid", 0xA900),
        ("invalid-uid", 0xA900),
        ("dicomdir", 0xA900),
        ("study-mismatch", 0xA900),
        ("too-large", 0xA701),
        ("a-reason-added-later", 0xC000),
    ],
)
def test_rejections_are_failures_a_sender_should_not_retry(reason: str, status: int) -> None:
    result = Rejected(reason, quarantined=True)
    assert status_for_result(result) == status
    assert not is_transient(status)


def test_out_of_resources_is_the_transient_status() -> None:
    assert is_transient(0xA700)


def test_error_comment_is_the_reason_and_fits_an_lo() -> None:
    assert error_comment(Rejected("missing-uid", "SOPInstanceUID")) == "missing-uid: SOPInstanceUID"
    assert len(error_comment(Rejected("x" * 100))) == 64
    assert error_comment(Accepted("e", "s", "c", "i", "h")) == ""

"""Keyed pseudonyms: deterministic per key, unlinkable across keys, references kept intact."""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import UID

from services.deid.engine import BASIC, RESEARCH, deidentify
from services.deid.engine.dates import shift_date, shift_datetime
from services.deid.engine.pseudonyms import Pseudonymizer

from .builders import KEY, OTHER_KEY, ct_dataset, to_bytes


def _out(data: bytes, key: bytes = KEY, profile=BASIC):
    return dcmread(BytesIO(deidentify(data, profile, key).data))


def test_same_input_and_key_give_identical_bytes() -> None:
    data = to_bytes(ct_dataset())
    assert deidentify(data, RESEARCH, KEY).data == deidentify(data, RESEARCH, KEY).data


def test_patient_pseudonym_is_stable_across_studies_and_differs_across_keys() -> None:
    first = _out(to_bytes(ct_dataset(study="1.2.826.0.1.3680043.99.1")))
    second = _out(to_bytes(ct_dataset(study="1.2.826.0.1.3680043.99.2")))
    other_key = _out(to_bytes(ct_dataset(study="1.2.826.0.1.3680043.99.1")), OTHER_KEY)
    assert first.PatientID == second.PatientID != other_key.PatientID
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.StudyInstanceUID != other_key.StudyInstanceUID
    assert str(first.PatientName) == first.PatientID.replace("-", "^", 1)


def test_uids_are_valid_uuid_derived_and_registry_uids_are_kept() -> None:
    out = _out(to_bytes(ct_dataset()))
    for uid in (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID, out.FrameOfReferenceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and UID(uid).is_valid
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_references_between_instances_stay_intact() -> None:
    """Instance 1 references instance 2; after de-identification it references 2's new UID."""
    one = _out(to_bytes(ct_dataset(instance=1)))
    two = _out(to_bytes(ct_dataset(instance=2)))
    assert one.ReferencedImageSequence[0].ReferencedSOPInstanceUID == two.SOPInstanceUID
    assert one.SeriesInstanceUID == two.SeriesInstanceUID
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID


def test_day_shift_is_per_patient_and_keeps_intervals() -> None:
    first = _out(to_bytes(ct_dataset(study="1.2.826.0.1.3680043.99.1")), profile=RESEARCH)
    later = ct_dataset(study="1.2.826.0.1.3680043.99.2")
    later.StudyDate = later.ContentDate = later.SeriesDate = "20240415"
    second = _out(to_bytes(later), profile=RESEARCH)
    assert first.StudyDate != "20240315"
    assert _days(second.StudyDate) - _days(first.StudyDate) == 31  # 15 March to 15 April
    assert first.PatientAge == "073Y"


def _days(value: str) -> int:
    return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])).toordinal()


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240301", -1, "20240229"),
        ("2024.03.01", -1, "20240229"),
        ("20240301-20240310", -1, "20240229-20240309"),
        ("garbage", -1, None),
    ],
)
def test_date_shift(value: str, days: int, expected: str | None) -> None:
    assert shift_date(value, days) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301101500.123+0100", "20240229101500.123+0100"),
        ("2024", "2023"),
        ("202403", "202402"),
        ("20240301", "20240229"),
        ("2024x", None),
    ],
)
def test_datetime_shift_keeps_precision_time_and_offset(value: str, expected: str | None) -> None:
    assert shift_datetime(value, -1) == expected

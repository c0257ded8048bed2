"""Every concrete attribute of PS3.15 Table E.1-1, checked one by one against the CSV.

The expected outcome is derived here from the CSV and the documented rules for compound codes
(services/deid/engine/README.md), independently of the engine's own rule compilation.
"""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from services.deid.engine import BASIC, RESEARCH, Option, Profile, deidentify
from services.deid.engine.rules import CONTENT_SEQUENCE

from .builders import (
    KEY,
    NESTING_SEQUENCE,
    concrete_tags,
    every_attribute_dataset,
    to_bytes,
    value_for,
    vr_for,
)

PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
ETHICS_COMMITTEE_NAME, ETHICS_APPROVAL = 0x00120081, 0x00120082
SEQUENCE_TYPES = {0x00400555: "Z", 0x0040B020: "D"}
TEXT = {"CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"}
BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

ALL_COMPATIBLE = frozenset(o for o in Option if o is not Option.RETAIN_LONGITUDINAL_FULL_DATES)
PROFILES = [
    BASIC,
    RESEARCH,
    Profile("everything", options=ALL_COMPATIBLE),
    *(Profile(option.name.lower(), options=frozenset({option})) for option in Option),
]


def expected_code(row: dict[str, str], options: frozenset[Option]) -> str:
    chosen = [row[option.value] for option in options if row[option.value]]
    if not chosen:
        return row["basic_profile"]
    return "C" if "C" in chosen else chosen[0]


def resolve(code: str, tag: int, vr: str) -> str:
    if "/" not in code:
        return code
    if vr == "SQ":
        return "U" if code == "X/Z/U*" else SEQUENCE_TYPES.get(tag, "X")
    return "Z" if code == "X/Z" else "D"


@pytest.fixture(scope="module")
def original() -> Dataset:
    return every_attribute_dataset()


@pytest.fixture(scope="module")
def original_bytes(original: Dataset) -> bytes:
    return to_bytes(original)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_attribute_follows_the_table(profile: Profile, original_bytes: bytes) -> None:
    result = deidentify(original_bytes, profile, KEY)
    out = dcmread(BytesIO(result.data))
    nested = out[NESTING_SEQUENCE].value[0]
    problems = []
    for tag, row in concrete_tags().items():
        vr = vr_for(tag)
        action = resolve(expected_code(row, profile.options), tag, vr)
        if tag == ETHICS_COMMITTEE_NAME and expected_code(concrete_tags()[ETHICS_APPROVAL], profile.options) == "X":
            action = "X"  # Type 1C on the approval number (PS3.3 C.7.1.3), which the table removes
        if tag == CONTENT_SEQUENCE and action == "D":
            action = "Z"  # a report's content tree holds free text the table does not list (rules.CONTENT_SEQUENCE)
        problems += _check(out, tag, vr, action, "top")
        if vr != "SQ":
            problems += _check(nested, tag, vr, action, "nested")
    assert not problems, "\n".join(problems)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta


def _check(ds: Dataset, tag: int, vr: str, action: str, where: str) -> list[str]:
    original = value_for(tag, vr) if vr != "SQ" else None
    present = tag in ds
    value = ds[tag].value if present else None
    label = f"{where} ({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} {action}"
    if action == "X":
        return [f"{label}: still present"] if present else []
    if not present:
        return [f"{label}: removed"] if not (action == "C" and vr in BINARY) else []
    if vr == "SQ":
        expect_items = action != "Z"
        return [f"{label}: items {len(value)}"] if bool(value) != expect_items else []
    if tag in (PATIENT_NAME, PATIENT_ID) and action in ("Z", "D"):
        return [] if str(value).startswith("IMX") else [f"{label}: not a pseudonym"]
    if action == "K":
        return [] if _same(value, original) else [f"{label}: changed"]
    if action == "Z":
        return [] if ds[tag].is_empty else [f"{label}: not empty"]
    if action in ("D", "U"):
        if vr == "UI":
            return [] if str(value).startswith("2.25.") else [f"{label}: UID not replaced"]
        return [] if not ds[tag].is_empty and not _same(value, original) else [f"{label}: not a dummy"]
    return _check_clean(label, vr, value, original)


def _check_clean(label: str, vr: str, value: object, original: object) -> list[str]:
    if vr in ("DA", "DT"):
        return [] if str(value)[:8] != str(original)[:8] and _is_date(str(value)[:8]) else [f"{label}: not shifted"]
    if vr == "AE":
        return [] if str(value).startswith("IMX") else [f"{label}: AE not replaced"]
    if vr == "PN":
        return [] if str(value).startswith("IMX^") else [f"{label}: name not replaced"]
    if vr == "UI":
        return [] if str(value).startswith("2.25.") else [f"{label}: UID not replaced"]
    if vr in BINARY:
        return [f"{label}: binary kept"]
    if vr in ("LT", "ST", "UT"):
        return [] if not value else [f"{label}: narrative text kept"]
    # Text without any identifier in it, numbers and times are kept by cleaning.
    return [] if _same(value, original) else [f"{label}: changed by cleaning"]


def _same(value: object, original: object) -> bool:
    if isinstance(original, float | int) and not isinstance(original, bool):
        return value == original
    return str(value) == str(original)


def _is_date(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def test_overlay_and_curve_groups_are_removed_whole(original_bytes: bytes) -> None:
    out = dcmread(BytesIO(deidentify(original_bytes, BASIC, KEY).data))
    assert not [elem.tag for elem in out if elem.tag >> 24 in (0x50, 0x60)]


def test_modified_dates_shift_every_date_by_the_same_number_of_days(original_bytes: bytes) -> None:
    out = dcmread(BytesIO(deidentify(original_bytes, RESEARCH, KEY).data))
    shifts = {
        (dt.datetime.strptime(str(elem.value)[:8], "%Y%m%d") - dt.datetime(2020, 1, 2)).days
        for elem in out.iterall()
        if elem.VR in ("DA", "DT") and elem.value and str(elem.value) != "19000101" and elem.tag != 0x00100030
    }
    assert len(shifts) == 1
    assert -(365 + 3650) <= shifts.pop() <= -365


def test_method_attributes_name_profile_and_options(original_bytes: bytes) -> None:
    out = dcmread(BytesIO(deidentify(original_bytes, RESEARCH, KEY).data))
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113108"]
    assert all(item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence)
    assert "Retain Patient Characteristics Option" in out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"

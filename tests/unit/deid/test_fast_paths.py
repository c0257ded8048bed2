"""The engine's shortcuts around pydicom's Dataset API behave exactly like the API they replace."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.deid.engine import BASIC, RESEARCH, Option, Profile
from services.deid.engine.container import file_meta_for
from services.deid.engine.method import record_method
from services.deid.engine.transform import vr_of
from services.deid.engine.values import codec_of, element_string_values, string_values

from .builders import ct_dataset, to_bytes


def _read(syntax: str) -> Dataset:
    return dcmread(BytesIO(to_bytes(ct_dataset(), syntax)), stop_before_pixels=True)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_element_string_values_match_string_values(syntax: str) -> None:
    ds = _read(syntax)
    codec = codec_of(ds)
    for tag in list(ds.keys()):
        if vr_of(ds, tag) == "SQ":
            continue
        assert element_string_values(ds, tag, ds.get_item(tag), codec) == string_values(ds, tag, codec)


def _record_by_keyword(ds: Dataset, name: str, version: str, options: frozenset[Option], cleaned: bool) -> None:
    """record_method as it was written with keyword attributes, for comparison."""
    from pydicom.sequence import Sequence

    from services.deid.engine.method import MAX_LO, method_codes

    codes = method_codes(options, cleaned)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"imx {name} v{version}"[:MAX_LO]] + [m[:MAX_LO] for _, m in codes]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    if cleaned:
        ds.BurnedInAnnotation = "NO"


@pytest.mark.parametrize("profile", [BASIC, RESEARCH])
@pytest.mark.parametrize("cleaned", [False, True])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_record_method_matches_keyword_assignment(profile: Profile, cleaned: bool, syntax: str) -> None:
    source = ct_dataset()
    source.PatientIdentityRemoved = "NO"  # present already: its element is updated in place
    source.BurnedInAnnotation = "YES"
    data = to_bytes(source, syntax)
    with config.disable_value_validation():
        fast, slow = (dcmread(BytesIO(data), stop_before_pixels=True) for _ in range(2))
        record_method(fast, profile.name, profile.version, profile.rules.options, cleaned)
        _record_by_keyword(slow, profile.name, profile.version, profile.rules.options, cleaned)
    assert [(e.tag, e.VR, e.value) for e in fast.iterall()] == [(e.tag, e.VR, e.value) for e in slow.iterall()]
    assert list(fast.keys()) == list(slow.keys())


def test_file_meta_matches_keyword_assignment() -> None:
    ds = _read(ExplicitVRLittleEndian)
    meta = file_meta_for(ds, ExplicitVRLittleEndian, "1.2.3")
    assert [(e.keyword, e.VR, e.value) for e in meta] == [
        ("FileMetaInformationVersion", "OB", b"\x00\x01"),
        ("MediaStorageSOPClassUID", "UI", ds.SOPClassUID),
        ("MediaStorageSOPInstanceUID", "UI", ds.SOPInstanceUID),
        ("TransferSyntaxUID", "UI", ExplicitVRLittleEndian),
        ("ImplementationClassUID", "UI", "2.25.181870392806524116574826620370432145461"),
        ("ImplementationVersionName", "SH", "IMX_DEID_1"),
    ]

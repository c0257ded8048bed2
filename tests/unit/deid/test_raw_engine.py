"""The fast path (raw_engine.py) against the pydicom path it stands in for: same output, same errors."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study
from services.deid.engine import BASIC, RESEARCH, DeidError, Option, Profile, deidentify
from services.deid.engine.deidentifier import DeidResult, deidentify_with_pydicom
from services.deid.engine.pseudonyms import Pseudonymizer
from services.deid.engine.raw_elements import Unsupported
from services.deid.engine.raw_engine import deidentify_raw

from .builders import KEY, ct_dataset, every_attribute_dataset, to_bytes
from .test_properties import PROFILES, _instance, datasets

EVERY_OPTION = [Profile(option.name.lower(), options=frozenset({option})) for option in Option]
COMMON_PROFILES = [BASIC, RESEARCH, *[p for p in EVERY_OPTION if Option.RETAIN_SAFE_PRIVATE not in p.options]]


def _every_attribute_instance(after_pixels: bool = False, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = ct_dataset()
    for elem in every_attribute_dataset():
        ds[elem.tag] = elem
    if not after_pixels:  # elements after Pixel Data send the instance down the pydicom path
        for tag in [elem.tag for elem in ds if elem.tag > 0x7FE00010]:
            del ds[tag]
    with config.disable_value_validation():
        return to_bytes(ds, syntax)


def _synthetic_ct() -> bytes:
    return dataset_to_bytes(next(iter(generate_study(7, "CT", 1, "RAW"))))


def _implicit(data: bytes) -> bytes:
    """The same instance re-encoded in implicit VR little endian (what many older modalities send)."""
    with config.disable_value_validation():
        ds = dcmread(BytesIO(data))
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        out = BytesIO()
        ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
        return out.getvalue()


def _same_result(fast: DeidResult, reference: DeidResult) -> None:
    def identity(result: DeidResult) -> dict[str, object]:
        return {k: v for k, v in vars(result).items() if k not in ("chunks", "data", "source_offset")}

    assert identity(fast) == identity(reference)
    if fast.data == reference.data:
        return
    # Both paths copy untouched values; values pydicom re-encodes may differ in padding only.
    with config.disable_value_validation():
        ours, theirs = dcmread(BytesIO(fast.data)), dcmread(BytesIO(reference.data))
    assert ours.file_meta == theirs.file_meta
    assert ours == theirs


@pytest.mark.parametrize("profile", COMMON_PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize(
    "instance",
    [
        _synthetic_ct,
        lambda: to_bytes(ct_dataset()),
        _every_attribute_instance,
        lambda: _implicit(_synthetic_ct()),
        lambda: to_bytes(ct_dataset(), ImplicitVRLittleEndian),
        lambda: _every_attribute_instance(syntax=ImplicitVRLittleEndian),
    ],
    ids=[
        "synthetic-ct",
        "ct-with-phi",
        "every-attribute",
        "implicit-synthetic-ct",
        "implicit-ct-with-phi",
        "implicit-every-attribute",
    ],
)
def test_common_instances_take_the_fast_path_and_match_the_pydicom_path_byte_for_byte(instance, profile) -> None:  # type: ignore[no-untyped-def]
    data = instance()
    fast = deidentify_raw(data, profile, Pseudonymizer(KEY))  # raises Unsupported if it fell back
    reference = deidentify_with_pydicom(data, profile, KEY)
    assert b"".join((fast.header, fast.pixel_bytes)) == reference.data
    _same_result(deidentify(data, profile, KEY), reference)


def test_what_the_fast_path_does_not_cover_goes_through_the_pydicom_path() -> None:
    deflated = to_bytes(ct_dataset(), DeflatedExplicitVRLittleEndian)
    padded = _every_attribute_instance(after_pixels=True)
    ultrasound = ct_dataset()
    ultrasound.Modality = "US"  # may carry burned-in text: refusal lives in the pydicom path
    if "BurnedInAnnotation" in ultrasound:
        del ultrasound.BurnedInAnnotation
    for data in (deflated, padded, to_bytes(ultrasound)):
        with pytest.raises(Unsupported):
            deidentify_raw(data, BASIC, Pseudonymizer(KEY))
    for data in (deflated, padded):
        _same_result(deidentify(data, BASIC, KEY), deidentify_with_pydicom(data, BASIC, KEY))
    with pytest.raises(DeidError):
        deidentify(to_bytes(ultrasound), BASIC, KEY)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=datasets(), profile=st.sampled_from([*PROFILES, *EVERY_OPTION]), implicit=st.booleans())
def test_both_paths_agree_on_arbitrary_datasets(body: Dataset, profile: Profile, implicit: bool) -> None:
    with config.disable_value_validation():
        data = _instance(body)
    if implicit:
        data = _implicit(data)
    try:
        reference = deidentify_with_pydicom(data, profile, KEY)
    except DeidError as error:
        with pytest.raises(type(error)):
            deidentify(data, profile, KEY)
        return
    _same_result(deidentify(data, profile, KEY), reference)


def test_a_patient_id_padded_with_nuls_shifts_dates_alike_on_both_paths() -> None:
    """The day shift hangs on the Patient ID: the pydicom path kept a leading NUL the fast path strips,
    so one patient's CT (fast path) and ultrasound (pydicom path) got different shifts."""
    from services.deid.engine import RESEARCH

    ds = ct_dataset()
    ds.PatientID = "PID0012345XY"
    data = to_bytes(ds)
    nul_padded = data.replace(b"PID0012345XY", b"\0PID0012345 ")
    plain = data.replace(b"PID0012345XY", b"PID0012345  ")
    fast = deidentify_raw(nul_padded, RESEARCH, Pseudonymizer(KEY))
    reference = deidentify_with_pydicom(nul_padded, RESEARCH, KEY).data
    assert b"".join((fast.header, fast.pixel_bytes)) == reference
    dates = {dcmread(BytesIO(deidentify_with_pydicom(d, RESEARCH, KEY).data)).StudyDate for d in (nul_padded, plain)}
    assert len(dates) == 1, "the same patient, the same shift"


def _with_private_sequence_holding(ds: Dataset, inner: Dataset) -> bytes:
    """`ds` in implicit VR, with a private sequence of undefined length whose one item is `inner`."""
    from pydicom.sequence import Sequence

    block = ds.private_block(0x0019, "ACME PRIVATE", create=True)
    block.add_new(0x10, "SQ", Sequence([inner]))
    ds[block.get_tag(0x10)].is_undefined_length = True  # as modalities write them
    with config.disable_value_validation():
        data = to_bytes(ds, ImplicitVRLittleEndian)
    # undefined length and implicit VR: the raw reader sees VR "UN", with items
    assert b"\x19\x00\x10\x10\xff\xff\xff\xff" in data
    return data


def test_identifiers_inside_an_implicit_private_sequence_are_looked_for_on_the_fast_path_too() -> None:
    """The fast path read such a sequence as "UN" and skipped it before looking at its items: an operator's
    name only there stayed in a cleaned Series Description, where the pydicom path removed it."""
    ds = ct_dataset()
    ds.SeriesDescription = "CT by Quibblethorpe"
    inner = Dataset()
    inner.OperatorsName = "Quibblethorpe^Ann"
    data = _with_private_sequence_holding(ds, inner)
    profile = Profile("cd", options=frozenset({Option.CLEAN_DESCRIPTORS}))
    fast = deidentify_raw(data, profile, Pseudonymizer(KEY))
    reference = deidentify_with_pydicom(data, profile, KEY).data
    assert b"".join((fast.header, fast.pixel_bytes)) == reference
    assert b"Quibblethorpe" not in reference


@pytest.mark.parametrize("flag", [b"\0NO", b"\0\0NO  "])
def test_a_burned_in_flag_with_a_leading_nul_is_no_no_on_either_path(flag: bytes) -> None:
    """The fast path stripped the NUL, read NO and released an ultrasound that the pydicom path, reading
    "\\0NO", refused as possibly burned-in."""
    ds = ct_dataset()
    ds.Modality = "US"
    ds.BurnedInAnnotation = "NO"
    data = to_bytes(ds).replace(b"\x28\x00\x01\x03CS\x02\x00NO", b"\x28\x00\x01\x03CS" + bytes([len(flag), 0]) + flag)
    assert flag in data
    with pytest.raises(Unsupported):
        deidentify_raw(data, BASIC, Pseudonymizer(KEY))
    with pytest.raises(DeidError):
        deidentify(data, BASIC, KEY)


def test_an_ultrasound_with_pixel_data_and_no_rows_is_checked_not_released() -> None:
    """The pydicom path reads the header without the pixel data: with no Rows either, it saw no image and
    released the ultrasound unchecked (the fast path refused it)."""
    ds = ct_dataset()
    ds.Modality = "US"
    for keyword in ("BurnedInAnnotation", "Rows"):
        if keyword in ds:
            delattr(ds, keyword)
    with config.disable_value_validation():
        data = to_bytes(ds)
    with pytest.raises(DeidError):
        deidentify_with_pydicom(data, BASIC, KEY)


@pytest.mark.parametrize("blank", [b"  ", b"\0\0", b" \0"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_blank_patient_id_stays_empty_on_both_paths(blank: bytes, syntax: str) -> None:
    """The fast path pseudonymised a padding-only Patient ID: one pseudonym for every blank patient,
    linking them, where the pydicom path (reading it as empty) left it empty."""
    ds = ct_dataset(patient="PIDXXXXXXX")
    data = to_bytes(ds, syntax)
    # its length (two bytes after the VR in explicit VR, four in implicit) and value, made blank
    data = data.replace(b"\x0a\x00PIDXXXXXXX", b"\x02\x00" + blank)
    data = data.replace(b"\x0a\x00\x00\x00PIDXXXXXXX", b"\x02\x00\x00\x00" + blank)
    assert b"PIDXXXXXXX" not in data
    for profile in (BASIC, RESEARCH):
        fast = deidentify_raw(data, profile, Pseudonymizer(KEY))
        reference = deidentify_with_pydicom(data, profile, KEY).data
        assert b"".join((fast.header, fast.pixel_bytes)) == reference
        with config.disable_value_validation():
            assert dcmread(BytesIO(reference)).PatientID == ""


@pytest.mark.parametrize("vr", [b"OB", b"US", b"FD"])
def test_a_name_written_under_a_binary_or_numeric_vr_is_refused_not_written_as_text(vr: bytes) -> None:
    """The fast path wrote the pseudonym's text under the element's OB/US/FD and released it: no valid
    element, where the pydicom path refuses the instance."""
    data = to_bytes(ct_dataset())
    at = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010) Patient's Name, explicit VR
    (length,) = struct.unpack_from("<H", data, at + 6)
    value = data[at + 8 : at + 8 + length]
    long_form = vr in (b"OB",)
    header = (
        b"\x10\x00\x10\x00"
        + vr
        + (b"\0\0" + struct.pack("<I", len(value)) if long_form else struct.pack("<H", len(value)))
    )
    data = data[:at] + header + value + data[at + 8 + length :]
    with pytest.raises(Unsupported):
        deidentify_raw(data, BASIC, Pseudonymizer(KEY))
    with pytest.raises(DeidError):
        deidentify(data, BASIC, KEY)


def test_a_malformed_pixel_representation_is_refused_on_both_paths() -> None:
    data = to_bytes(ct_dataset())
    at = data.index(b"\x28\x00\x03\x01US\x02\x00")  # (0028,0103) Pixel Representation
    data = data[:at] + b"\x28\x00\x03\x01US\x03\x00\x00\x00\x00" + data[at + 10 :]
    with pytest.raises(Unsupported):
        deidentify_raw(data, BASIC, Pseudonymizer(KEY))
    with pytest.raises(DeidError):
        deidentify(data, BASIC, KEY)


def test_a_multi_valued_modality_is_reported_alike_on_both_paths_never_as_python_list_text() -> None:
    ds = ct_dataset()
    ds.Modality = ["CT", "MR"]  # VM 1 in the standard; sent anyway
    with config.disable_value_validation():
        data = to_bytes(ds)
    fast, reference = deidentify(data, BASIC, KEY), deidentify_with_pydicom(data, BASIC, KEY)
    assert fast.modality == reference.modality == "CT\\MR"


def test_an_ultrasound_among_several_modalities_is_checked_for_burned_in_text() -> None:
    """Modality "CT\\US" (VM 1 in the standard; sent anyway) read as Python's list text on the pydicom
    path, no risky modality: the ultrasound was released unchecked."""
    ds = ct_dataset()
    ds.Modality = ["CT", "US"]
    if "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    with config.disable_value_validation():
        data = to_bytes(ds)
    with pytest.raises(DeidError):
        deidentify(data, BASIC, KEY)

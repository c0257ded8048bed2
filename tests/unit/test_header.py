"""Header inspection: the right identity and routing attributes, typed reasons, and no PHI in errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from services.common.dicom.header import ROUTING_KEYWORDS, InvalidInstance, inspect_instance
from services.common.dicom.part10 import dataset_to_bytes, read_dataset
from services.common.dicom.synthetic import StudyPlan, plan_study, study_instances

LIMIT = 10_000_000


@functools.cache
def _plan() -> StudyPlan:
    return plan_study(21, "CT", 1, "RXA01")


def _dataset() -> FileDataset:
    return next(study_instances(_plan()))


@functools.cache
def _ct() -> bytes:
    return dataset_to_bytes(_dataset())


@functools.cache
def _small() -> bytes:
    """The CT header with an 8x8 image: small enough for hypothesis to mutate quickly."""
    ds = _dataset()
    ds.Rows = ds.Columns = 8
    ds.PixelData = np.arange(64, dtype="<u2").tobytes()
    return dataset_to_bytes(ds)


def _reason(data: bytes, limit: int = LIMIT) -> tuple[str, str]:
    with pytest.raises(InvalidInstance) as caught:
        inspect_instance(data, limit)
    return caught.value.reason, caught.value.detail


def test_a_valid_instance_gives_its_uids_and_routing_attributes() -> None:
    ds = _dataset()
    header = inspect_instance(_ct(), LIMIT)
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.series_instance_uid == ds.SeriesInstanceUID
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert header.modality == "CT"
    assert dict(header.routing) == {
        "modality": "CT",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "study_description": _plan().description,
        "body_part_examined": _plan().body_part,
        "burned_in_annotation": "NO",
        "manufacturer": "Synthetica Medical",
        "manufacturer_model_name": "SynthCT 64",
        "rows": "512",
        "columns": "512",
    }


def test_absent_routing_attributes_are_empty_strings() -> None:
    ds = _dataset()
    del ds.BodyPartExamined, ds.Manufacturer
    routing = inspect_instance(dataset_to_bytes(ds), LIMIT).routing
    assert set(routing) == set(ROUTING_KEYWORDS)
    assert routing["body_part_examined"] == routing["manufacturer"] == ""


def test_text_is_decoded_with_the_specific_character_set() -> None:
    ds = _dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDescription = "IRM cérébrale"
    assert inspect_instance(dataset_to_bytes(ds), LIMIT).routing["study_description"] == "IRM cérébrale"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_native_transfer_syntaxes_are_read(syntax: UID) -> None:
    ds = read_dataset(_small())
    ds.file_meta.TransferSyntaxUID = syntax
    header = inspect_instance(dataset_to_bytes(ds), LIMIT)
    assert header.transfer_syntax_uid == syntax
    assert (header.routing["rows"], header.routing["columns"]) == ("8", "8")


@pytest.mark.parametrize("kept", [0.5, 0.9, 0.99])
def test_a_deflated_instance_cut_short_is_truncated(kept: float) -> None:
    """Its stream stops before the last block: it was accepted (success to the sender, a corrupt file
    delivered), where the same cut of an uncompressed instance is refused."""
    ds = read_dataset(_ct())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = dataset_to_bytes(ds)
    assert inspect_instance(data, LIMIT).transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert _reason(data[: int(len(data) * kept)]) == ("truncated", "deflated data set")


def test_encapsulated_pixel_data_is_checked_for_truncation() -> None:
    ds = read_dataset(_small())
    ds.compress(RLELossless)
    data = dataset_to_bytes(ds)
    assert inspect_instance(data, LIMIT).transfer_syntax_uid == RLELossless
    assert _reason(data[:-10]) == ("truncated", "PixelData")


@pytest.mark.parametrize("data", [b"", b"hello", b"\0" * 128 + b"DICM", b"\0" * 4096], ids=repr)
def test_bytes_that_are_not_part10_are_not_dicom(data: bytes) -> None:
    assert _reason(data)[0] in ("not-dicom", "truncated", "missing-uid")
    assert _reason(b"\0" * 132)[0] == "not-dicom"


def test_a_file_without_its_preamble_is_not_accepted() -> None:
    assert _reason(_ct()[128:]) == ("not-dicom", "")


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
def test_missing_or_empty_uids_are_named(keyword: str) -> None:
    ds = _dataset()
    delattr(ds, keyword)
    assert _reason(dataset_to_bytes(ds)) == ("missing-uid", keyword)
    ds = _dataset()
    setattr(ds, keyword, "")
    assert _reason(dataset_to_bytes(ds)) == ("missing-uid", keyword)


@pytest.mark.parametrize("bad", ["1.2.abc", "1..2", "1.2.", "1." + "2" * 63, "SMITH^OLIVIA"])
def test_malformed_uids_are_invalid(bad: str) -> None:
    ds = _dataset()
    ds.add(DataElement(0x0020000D, "UI", bad, validation_mode=config.IGNORE))
    assert _reason(dataset_to_bytes(ds)) == ("invalid-uid", "StudyInstanceUID")


def test_leading_zeros_in_uid_components_are_tolerated() -> None:
    ds = _dataset()
    ds.add(DataElement(0x0020000D, "UI", "1.2.826.0.1.0345", validation_mode=config.IGNORE))
    assert inspect_instance(dataset_to_bytes(ds), LIMIT).study_instance_uid == "1.2.826.0.1.0345"


def test_a_dicomdir_is_refused() -> None:
    ds = FileDataset("", {}, preamble=b"\0" * 128)
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "DEMO"
    ds.DirectoryRecordSequence = []
    assert _reason(dataset_to_bytes(ds)) == ("dicomdir", "MediaStorageSOPClassUID")


def test_too_large_names_the_limit_before_parsing() -> None:
    assert _reason(_ct(), limit=1000) == ("too-large", "1000")
    assert _reason(b"x" * 11, limit=10) == ("too-large", "10")
    assert inspect_instance(_ct(), len(_ct())).modality == "CT"


def test_every_truncation_is_refused() -> None:
    data = _small()
    for cut in range(0, len(data) - 1):
        with pytest.raises(InvalidInstance):
            inspect_instance(data[:cut], LIMIT)


def test_truncated_pixel_data_is_reported_as_such() -> None:
    assert _reason(_ct()[:-1]) == ("truncated", "PixelData")
    assert _reason(_ct()[:100_000]) == ("truncated", "PixelData")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_invalid_instance(data: bytes) -> None:
    for candidate in (data, b"\0" * 128 + b"DICM" + data, _small()[:300] + data):
        with contextlib.suppress(InvalidInstance):
            inspect_instance(candidate, LIMIT)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_files_raise_only_invalid_instance_and_never_echo_phi(data: st.DataObject) -> None:
    original = bytearray(_small())
    for _ in range(data.draw(st.integers(1, 8))):
        # Half the edits land in the file meta group and the first elements, which pydicom converts.
        position = data.draw(st.integers(128, 400) | st.integers(128, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    messages = _Messages()
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.addHandler(messages)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                inspect_instance(bytes(original[:cut]), LIMIT)
            except InvalidInstance as error:
                messages.said.append(f"{error!r} {error.detail}")
    finally:
        pydicom_logger.removeHandler(messages)
    said = " ".join(messages.said + [str(w.message) for w in caught])
    assert not [v for v in _plan().phi().values() if len(v) >= 4 and v in said]


def _failing_inputs() -> list[bytes]:
    """Instances full of PHI that fail for each reason, some with PHI where a UID should be."""
    plan = _plan()
    inputs = [_ct()[:2000], _ct()[:-1], _ct()[128:]]
    for keyword in ("StudyInstanceUID", "SOPInstanceUID"):
        ds = _dataset()
        delattr(ds, keyword)
        inputs.append(dataset_to_bytes(ds))
        ds = _dataset()
        ds.add(DataElement(Tag(keyword), "UI", plan.patient_name, validation_mode=config.IGNORE))
        inputs.append(dataset_to_bytes(ds))
    return inputs


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # from building the inputs
def test_errors_warnings_and_logs_never_carry_phi(caplog: pytest.LogCaptureFixture) -> None:
    plan = _plan()
    phi = [v for v in plan.phi().values() if len(v) >= 4]
    ds = _dataset()
    # Values pydicom's own conversion would warn about, quoting them.
    ds.add(DataElement(0x00080060, "CS", plan.patient_name, validation_mode=config.IGNORE))
    ds.add(DataElement(0x00081030, "LO", (plan.patient_name + " ") * 8, validation_mode=config.IGNORE))
    accepted, failing = dataset_to_bytes(ds), _failing_inputs()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inspect_instance(accepted, LIMIT)
        for data in failing:
            with pytest.raises(InvalidInstance) as error:
                inspect_instance(data, LIMIT)
            text = f"{error.value} {error.value!r} {error.value.detail}"
            assert not [v for v in phi if v in text]
    said = " ".join([str(w.message) for w in caught] + [r.getMessage() for r in caplog.records])
    assert not [v for v in phi if v in said]

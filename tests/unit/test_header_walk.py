"""The walked header (header_walk.py) gives what pydicom's reading gives, for every input.

`inspect_instance` tries the walk first and reads with pydicom only when the walk declines; here each
input goes through both, and the outcomes (the header, or the refusal's reason and detail) must be
equal. The walk must also actually serve the common inputs, or the speed-up is gone.
"""

from __future__ import annotations

import copy
import functools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from services.common.dicom import header
from services.common.dicom.header import DEFAULT_LIMITS, InputLimits, InvalidInstance, inspect_instance
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from tools.chaos_inputs import malformed_input

LIMIT = 10_000_000
Outcome = tuple[str, Any]


@contextmanager
def _walk_disabled() -> Iterator[None]:
    walked = header._fast_header
    header._fast_header = lambda *_: None
    try:
        yield
    finally:
        header._fast_header = walked


def _outcome(data: bytes, limits: InputLimits = DEFAULT_LIMITS) -> Outcome:
    try:
        found = inspect_instance(data, LIMIT, limits)
    except InvalidInstance as refused:
        return ("refused", (refused.reason, refused.detail))
    return ("read", (found, dict(found.routing)))


def _both(data: bytes, limits: InputLimits = DEFAULT_LIMITS) -> tuple[Outcome, Outcome]:
    with _walk_disabled():
        by_pydicom = _outcome(data, limits)
    return _outcome(data, limits), by_pydicom


def _walked(data: bytes) -> bool:
    syntax, body = header._check_prefix(data)
    return header._fast_header(data, body, syntax, DEFAULT_LIMITS) is not None


def _assert_same(data: bytes, limits: InputLimits = DEFAULT_LIMITS) -> Outcome:
    walked, by_pydicom = _both(data, limits)
    assert walked == by_pydicom
    return walked


@functools.cache
def _datasets() -> list[FileDataset]:
    out: list[FileDataset] = []
    for seed, modality in ((31, "CT"), (32, "MR"), (33, "CR")):
        out.extend(study_instances(plan_study(seed, modality, 2, "RXA01")))  # type: ignore[arg-type]
    return out


def _encoded(ds: FileDataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return dataset_to_bytes(ds)


@functools.cache
def _small() -> bytes:
    ds = copy.deepcopy(_datasets()[0])
    ds.Rows = ds.Columns = 8
    ds.PixelData = np.arange(64, dtype="<u2").tobytes()
    return dataset_to_bytes(ds)


def test_synthetic_instances_are_walked_and_read_alike() -> None:
    for ds in _datasets():
        data = _encoded(ds)
        assert _walked(data)
        assert _assert_same(data)[0] == "read"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_encodings_are_left_to_pydicom(syntax: str) -> None:
    data = _encoded(_datasets()[0], syntax)
    assert not _walked(data)
    assert _assert_same(data)[0] == "read"


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, RLELossless])
def test_encapsulated_pixel_data_is_walked_and_checked_alike(syntax: str) -> None:
    ds = copy.deepcopy(_datasets()[0])
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    fragments = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"
    ds.PixelData = fragments + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = dataset_to_bytes(ds)
    assert _walked(data) and _assert_same(data)[0] == "read"
    for cut in range(len(data) - 40, len(data)):  # into the fragments and the delimiter
        _assert_same(data[:cut])


def test_every_truncation_gives_the_same_refusal() -> None:
    data = _small()
    for cut in range(0, len(data)):
        _assert_same(data[:cut])


# Deflate bombs left out: deflated inputs are never walked, and inflating them is slow (they were 45
# skips in every run, hiding a real one).
@pytest.mark.parametrize("index", [i for i in range(400) if malformed_input(7, i).kind != "deflate-bomb"])
def test_the_chaos_runs_malformed_inputs_give_the_same_outcome(index: int) -> None:
    _assert_same(malformed_input(7, index).part10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_instances_give_the_same_outcome(data: st.DataObject) -> None:
    mutated = bytearray(_small())
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(132, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    _assert_same(bytes(mutated))


def _with(**changes: Any) -> bytes:
    ds = copy.deepcopy(_datasets()[0])
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return _encoded(ds)


def test_text_outside_ascii_is_left_to_pydicom_and_decoded_alike() -> None:
    data = _with(SpecificCharacterSet="ISO_IR 100", Manufacturer="Sören Médical")
    assert not _walked(data)
    assert _assert_same(data)[1][1]["manufacturer"] == "Sören Médical"
    data = _with(SpecificCharacterSet="ISO_IR 192", StudyDescription="脳 MRI")
    assert _assert_same(data)[1][1]["study_description"] == "脳 MRI"
    assert _walked(_with(SpecificCharacterSet="ISO_IR 100", Manufacturer="Plain"))


def test_a_dicomdir_is_refused_alike() -> None:
    data = _with(SOPClassUID="1.2.840.10008.1.3.10")
    assert _assert_same(data) == ("refused", ("dicomdir", "MediaStorageSOPClassUID"))


def test_refused_uids_keep_their_reasons() -> None:
    assert _assert_same(_with(SeriesInstanceUID="1.2.x"))[1] == ("invalid-uid", "SeriesInstanceUID")
    assert _assert_same(_with(StudyInstanceUID=""))[1] == ("missing-uid", "StudyInstanceUID")
    ds = copy.deepcopy(_datasets()[0])
    del ds.SeriesInstanceUID
    assert _assert_same(_encoded(ds))[1] == ("missing-uid", "SeriesInstanceUID")


def test_an_image_without_pixel_data_is_refused_alike() -> None:
    ds = copy.deepcopy(_datasets()[0])
    del ds.PixelData
    assert _assert_same(_encoded(ds))[1] == ("truncated", "PixelData")
    for keyword in ("Rows", "Columns", "ImageType", "BitsAllocated", "BitsStored", "HighBit"):
        if keyword in ds:
            delattr(ds, keyword)
    _assert_same(_encoded(ds))


def test_sequences_of_every_shape_are_walked_alike() -> None:
    ds = copy.deepcopy(_datasets()[0])
    inner = Dataset()
    inner.CodeValue = "T-1"
    empty = Dataset()
    ds.ReferencedImageSequence = Sequence([inner, empty])
    code = Dataset()
    code.CodeValue = "121311"
    ds.ReferencedImageSequence[0].PurposeOfReferenceCodeSequence = Sequence([code])
    for undefined in (True, False):
        ds["ReferencedImageSequence"].is_undefined_length = undefined
        data = _encoded(ds)
        assert _walked(data) and _assert_same(data)[0] == "read"


def test_nesting_deeper_than_the_limit_is_refused_alike() -> None:
    ds = copy.deepcopy(_datasets()[0])
    item = Dataset()
    item.CodeValue = "X"
    for _ in range(6):
        outer = Dataset()
        outer.ConceptNameCodeSequence = Sequence([item])
        item = outer
    ds.ContentSequence = Sequence([item])
    data = _encoded(ds)
    assert _assert_same(data, InputLimits(max_sequence_depth=32))[0] == "read"
    assert _assert_same(data, InputLimits(max_sequence_depth=3))[1] == ("too-deep", "3")


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def test_irregular_structure_is_left_to_pydicom() -> None:
    data = _small()
    body = header._check_prefix(data)[1]
    late = _element(0x00080001, b"UL", b"\0\0\0\0")  # lower than the tags before it
    tail = data.index(b"\xe0\x7f\x10\x00")
    for irregular in (
        data[:tail] + late + data[tail:],  # tags out of order
        data[:body] + b"\xfe\xff\x0d\xe0\0\0\0\0" + data[body:],  # an item delimiter at the top
        data[:body] + _element(0x00090010, b"ZZ", b"ABCD") + data[body:],  # unknown VR
        data + b"\0\0\0",  # trailing bytes after the pixel data are ignored by both
    ):
        _assert_same(irregular)

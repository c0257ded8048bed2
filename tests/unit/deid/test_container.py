"""Pixel data is copied, never re-encoded, on the fast path; other encodings take the full path."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from services.deid.engine import BASIC, NotDeidentifiable, deidentify
from services.deid.engine.container import parse

from .builders import KEY, ct_dataset, to_bytes


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_little_endian_takes_the_fast_path_and_copies_pixel_bytes(syntax: str) -> None:
    ds = ct_dataset()
    data = to_bytes(ds, syntax)
    assert parse(data).fast
    out = deidentify(data, BASIC, KEY).data
    assert out.endswith(data[data.rindex(b"\xe0\x7f\x10\x00") :])
    result = dcmread(BytesIO(out))
    assert result.file_meta.TransferSyntaxUID == syntax
    assert result.PixelData == ds.PixelData
    assert "PatientAddress" not in result


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_transfer_syntaxes_take_the_full_path(syntax: str) -> None:
    ds = ct_dataset()
    data = to_bytes(ds, syntax)
    assert not parse(data).fast
    result = dcmread(BytesIO(deidentify(data, BASIC, KEY).data))
    assert result.file_meta.TransferSyntaxUID == syntax
    assert result.pixel_array.tolist() == dcmread(BytesIO(data)).pixel_array.tolist()
    assert result.PatientName != ds.PatientName


def test_elements_after_pixel_data_force_the_full_path_and_are_removed() -> None:
    ds = ct_dataset()
    ds.add_new(0xFFFCFFFC, "OB", b"Thistlewood\x00")
    data = to_bytes(ds)
    assert not parse(data).fast
    result = dcmread(BytesIO(deidentify(data, BASIC, KEY).data))
    assert 0xFFFCFFFC not in result
    assert result.PixelData == ds.PixelData


def test_encapsulated_pixel_data_is_walked_and_copied() -> None:
    ds = ct_dataset()
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-two\xff\xd9"])
    ds["PixelData"].VR = "OB"
    data = to_bytes(ds, JPEGBaseline8Bit)
    assert parse(data).fast
    result = dcmread(BytesIO(deidentify(data, BASIC, KEY).data))
    assert result.PixelData == ds.PixelData


@pytest.mark.parametrize(
    "data",
    [b"", b"not dicom at all", b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI"],
    ids=["empty", "text", "truncated-meta"],
)
def test_unreadable_input_is_not_deidentifiable(data: bytes) -> None:
    with pytest.raises(NotDeidentifiable):
        deidentify(data, BASIC, KEY)


def test_truncated_pixel_data_is_refused() -> None:
    data = to_bytes(ct_dataset())
    with pytest.raises(NotDeidentifiable):
        deidentify(data[:-100], BASIC, KEY)

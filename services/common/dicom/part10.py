"""DICOM Part 10 (PS3.10 Section 7) byte strings to and from pydicom datasets."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import overload

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.filewriter import dcmwrite


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Encode `ds` as a Part 10 file: 128-byte preamble, "DICM", file meta group, then the data set.

    The transfer syntax is taken from `ds.file_meta.TransferSyntaxUID`; the meta group's
    Media Storage SOP Class/Instance UIDs and group length are filled in by pydicom.
    `enforce_file_format` is pydicom 3's name for the old `write_like_original=False`.
    """
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


PREAMBLE_BYTES = 128
_ZERO_PREAMBLE = bytes(PREAMBLE_BYTES)


@overload
def zero_preamble(data: bytes) -> bytes: ...


@overload
def zero_preamble(data: bytearray) -> bytearray: ...


def zero_preamble(data: bytes | bytearray) -> bytes | bytearray:
    """`data` with its 128-byte preamble set to zeros, otherwise unchanged; `data` itself when it is
    already zero or is not a Part 10 file, or is a bytearray (zeroed in place: no copy of an upload).

    PS3.10 7.1 leaves the preamble's content to the application and allows all zeros. Whatever a
    sender put there (CVE-2019-11687: a whole executable header, making the file a valid PE or ELF
    too) is not passed on to anyone.
    """
    if len(data) < PREAMBLE_BYTES + 4 or data[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != b"DICM":
        return data
    if data[:PREAMBLE_BYTES] == _ZERO_PREAMBLE:
        return data
    if isinstance(data, bytearray):
        data[:PREAMBLE_BYTES] = _ZERO_PREAMBLE
        return data
    return _ZERO_PREAMBLE + data[PREAMBLE_BYTES:]


def zero_preamble_file(path: Path) -> None:
    """`zero_preamble` for a file on disk, in place: only the first 132 bytes are read or written."""
    with open(path, "r+b") as file:
        head = file.read(PREAMBLE_BYTES + 4)
        if zero_preamble(head) is not head:
            file.seek(0)
            file.write(_ZERO_PREAMBLE)


def read_dataset(data: bytes, stop_before_pixels: bool = False) -> FileDataset:
    """Parse a Part 10 byte string; raises pydicom's errors (InvalidDicomError among others).

    `force=False` because a byte string without the Part 10 signature is not something we
    accept (PS3.18 application/dicom is Part 10 too); callers that need typed reasons use
    `header.inspect_instance` instead.
    """
    return dcmread(BytesIO(data), stop_before_pixels=stop_before_pixels, force=False)

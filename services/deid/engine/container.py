"""Split a Part 10 file into a header to rewrite and pixel data bytes to copy untouched.

Fast path (little endian, explicit or implicit VR, nothing after Pixel Data): only the header is
parsed and re-encoded; the Pixel Data element's original bytes are appended as they were, so pixel
data is never decoded or re-encoded (FIELD-NOTES.md: encoding is the cost).

The input may be bytes or a read-only memory map of the file (`Source`): on the fast path only the
header's pages are read, and the pixel data stay a view into the map, never copied.

Full path (deflated or big endian transfer syntaxes, or elements after Pixel Data such as Digital
Signatures (FFFA,FFFA) or Data Set Trailing Padding (FFFC,FFFC)): the whole file is parsed and
written back by pydicom in its original transfer syntax. It is slower and rare.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ImplicitVRLittleEndian

from .encoder import encode_body, encode_file_meta
from .errors import NotDeidentifiable

Source = bytes | mmap.mmap
"""A whole Part 10 file: bytes, or a read-only memory map of it."""

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
# A fixed UUID-derived UID naming this implementation in the File Meta Information (PS3.10 7.1).
IMPLEMENTATION_CLASS_UID = "2.25.181870392806524116574826620370432145461"
IMPLEMENTATION_VERSION = "IMX_DEID_1"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass
class Parsed:
    """A parsed input: the header dataset, and how to put the output back together."""

    dataset: Dataset  # the body (no file meta); on the full path it still holds Pixel Data
    transfer_syntax: UID
    pixel_bytes: memoryview  # fast path: the whole original Pixel Data element, tag to end
    fast: bool
    media_sop_instance_uid: str  # from the original File Meta Information

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == ImplicitVRLittleEndian


def parse(data: Source) -> Parsed:
    """Read the header (fast path) or the whole file (full path)."""
    stream = stream_of(data)
    try:
        header = dcmread(stream, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types; the message may quote values
        raise NotDeidentifiable(f"unreadable DICOM ({type(exc).__name__})") from None
    syntax = header.file_meta.get("TransferSyntaxUID")
    if not isinstance(syntax, str) or not UID(syntax).is_transfer_syntax:
        raise NotDeidentifiable("missing or unknown (0002,0010) Transfer Syntax UID")
    syntax = UID(syntax)
    media_uid = str(header.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    offset = stream.tell()
    if syntax.is_little_endian and not syntax.is_deflated:
        end = _pixel_element_end(data, offset, syntax == ImplicitVRLittleEndian)
        if end is not None and end > len(data):
            raise NotDeidentifiable("truncated (7FE0,0010) Pixel Data")
        if end == len(data):
            return Parsed(_body(header), syntax, memoryview(data)[offset:], True, media_uid)
    try:
        full = dcmread(stream_of(data))
    except Exception as exc:
        raise NotDeidentifiable(f"unreadable DICOM ({type(exc).__name__})") from None
    return Parsed(_body(full), syntax, memoryview(b""), False, media_uid)


def stream_of(data: Source) -> BinaryIO:
    """A file object over `data` without copying it: a memory map is one already."""
    if isinstance(data, mmap.mmap):
        data.seek(0)
        return data  # type: ignore[return-value]  # read/seek/tell, all dcmread uses
    return BytesIO(data)


def _body(ds: Dataset) -> Dataset:
    ds.file_meta = FileMetaDataset()
    return ds


def _pixel_element_end(data: Source, offset: int, implicit: bool) -> int | None:
    """Where the Pixel Data element starting at ``offset`` ends, or None if it cannot be walked."""
    if offset == len(data):
        return offset  # no pixel data at all (e.g. a structured report)
    if offset + 8 > len(data):
        return None
    group, element = struct.unpack_from("<HH", data, offset)
    if (group << 16 | element) not in PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack_from("<I", data, offset + 4)
        position = offset + 8
    else:
        vr = data[offset + 4 : offset + 6]
        if vr not in _LONG_VRS or offset + 12 > len(data):
            return None
        (length,) = struct.unpack_from("<I", data, offset + 8)
        position = offset + 12
    if length != UNDEFINED:
        return position + length
    return _encapsulated_end(data, position) or len(data) + 1  # no delimiter: truncated


def _encapsulated_end(data: Source, position: int) -> int | None:
    """Walk the items of encapsulated pixel data (PS3.5 A.4) to the sequence delimiter."""
    while position + 8 <= len(data):
        tag_group, tag_element, length = struct.unpack_from("<HHI", data, position)
        tag = tag_group << 16 | tag_element
        position += 8
        if tag == SEQUENCE_DELIMITER:
            return position
        if tag != ITEM or length == UNDEFINED:
            return None
        position += length
    return None


def file_meta_for(ds: Dataset, syntax: UID, media_sop_instance_uid: str | None) -> FileMetaDataset:
    """New File Meta Information: only what PS3.10 7.1 requires, with this implementation's identity.

    Source/sending/receiving AE titles and private meta elements of the original are dropped: they
    name the sending site.
    """
    meta = FileMetaDataset()
    # meta[tag] = DataElement(tag, dictionary VR, value): what setting each keyword on a new
    # dataset does, without the keyword lookups.
    for (tag, vr), value in zip(
        _META_ELEMENTS,
        (
            b"\x00\x01",
            UID(as_text(ds.get("SOPClassUID", ""))),
            UID(as_text(ds.get("SOPInstanceUID", media_sop_instance_uid or ""))),
            syntax,
            UID(IMPLEMENTATION_CLASS_UID),
            IMPLEMENTATION_VERSION,
        ),
        strict=True,
    ):
        meta[tag] = DataElement(tag, vr, value)
    return meta


_META_ELEMENTS = tuple(
    (tag, dictionary_VR(tag))
    for tag in (
        0x00020001,  # FileMetaInformationVersion
        0x00020002,  # MediaStorageSOPClassUID
        0x00020003,  # MediaStorageSOPInstanceUID
        0x00020010,  # TransferSyntaxUID
        0x00020012,  # ImplementationClassUID
        0x00020013,  # ImplementationVersionName
    )
)


def encode_header(ds: Dataset, meta: FileMetaDataset, implicit: bool) -> bytes:
    """Preamble, file meta and the dataset body, without Pixel Data."""
    return encode_file_meta(meta) + encode_body(ds, implicit)


def encode_full(ds: Dataset, meta: FileMetaDataset) -> bytes:
    """The whole file in its original transfer syntax (full path), with a zero preamble as the fast path
    writes: the input's preamble is the sender's free 128 bytes (PS3.10 7.1), and dcmwrite copied it."""
    ds.file_meta = meta
    if hasattr(ds, "preamble"):
        ds.preamble = None  # written as 128 zeros
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def encode_for_scan(ds: Dataset) -> bytes:
    """The body without pixel data, explicit VR little endian: what the leak check reads."""
    pixels = {tag: ds.get_item(tag) for tag in PIXEL_TAGS if tag in ds}
    for tag in pixels:
        del ds[tag]
    try:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_dataset(buffer, ds)
        return buffer.getvalue()
    finally:
        for tag, elem in pixels.items():
            ds[tag] = elem  # restore the untouched (possibly raw) element as it was


def as_text(value: object) -> str:
    """A value as its element's text: a multi-valued one joined by backslashes as it is encoded (the fast
    path reads it so), never Python's list text ("['CT', 'MR']") in an event or the file meta."""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(item) for item in value)
    return "" if value is None else str(value)

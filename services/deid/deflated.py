"""Deflated inputs (Deflated Explicit VR Little Endian, PS3.5 A.5) on the same memory-mapped path as
explicit VR little endian ones, so that their size costs disk, not memory.

pydicom inflates a deflated data set whole in memory (a 64 MiB instance raised the stage's resident
memory by ~268 MiB), and the fast path (engine/raw_engine.py) cannot read one at all. But the body,
inflated, *is* the explicit VR little endian data set (PS3.5 A.5). So it is inflated a piece at a time
(services/common/dicom/header.py `inflate_pieces`, within the inflated-size limit ingest enforces)
into a file whose File Meta Information says explicit VR little endian, and that file is
de-identified through a memory map like any other (files.py `deidentified`).

The output stays deflated, as it was when pydicom wrote it: the recipient receives the encoding the
sender chose. Its data set is deflated a window at a time with pydicom's parameters, into a file, so
the released bytes are the ones the pydicom path gave, without ever holding either form whole.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from services.common.blob_store import windows
from services.common.dicom.header import InvalidInstance, inflate_pieces
from services.deid.engine import DeidResult, NotDeidentifiable
from services.deid.engine.container import Source
from services.deid.engine.raw_elements import LONG_VRS

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT = "1.2.840.10008.1.2.1"
_PREFIX = 132  # preamble and "DICM" (PS3.10 7.1)
_GROUP_LENGTH = 0x00020000
_TRANSFER_SYNTAX = 0x00020010
_LONG_VR_BYTES = frozenset(vr.encode("ascii") for vr in LONG_VRS)


def deflated_body(data: Source) -> int | None:
    """Where the deflated data set of `data` starts; None when `data` is not a deflated Part 10 file
    (or its meta group cannot be walked: the engine explains that)."""
    try:
        elements = list(_meta_elements(data))
    except (ValueError, struct.error):
        return None
    syntax = next((value for tag, _vr, value in elements if tag == _TRANSFER_SYNTAX), b"")
    if bytes(syntax).rstrip(b"\x00 ") != DEFLATED.encode("ascii"):
        return None
    return _end_of(elements)


def inflate_into(file: BinaryIO, data: Source, body: int, limit: int) -> None:
    """Write `data` to `file` as explicit VR little endian: its meta group saying so, then its data
    set inflated a piece at a time. Raises NotDeidentifiable for a broken stream or one past `limit`."""
    file.write(with_transfer_syntax(memoryview(data)[:body], EXPLICIT))
    try:
        for piece in inflate_pieces(memoryview(data)[body:], limit):
            file.write(piece)
    except InvalidInstance as error:
        if error.reason == "inflated-too-large":
            raise NotDeidentifiable(f"deflated data set inflates past {limit} bytes") from None
        raise NotDeidentifiable("broken deflate stream") from None
    file.flush()


def deflate_into(file: BinaryIO, result: DeidResult) -> bytes:
    """Write the data set of `result` (explicit VR little endian) to `file` deflated, as pydicom does
    (raw deflate at zlib's default level, padded to even length: PS3.5 A.5, PS3.10 7.1); returns the
    output's meta group, saying deflated, which goes before it."""
    first = memoryview(result.chunks[0]).cast("B")
    end = meta_end(first)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    size = 0
    # Window by window: pixel data mapped from the inflated file leave this process as they are read.
    for window in windows((first[end:], *result.chunks[1:])):
        size += file.write(compressor.compress(window))
    size += file.write(compressor.flush())
    if size % 2:
        file.write(b"\x00")
    file.flush()
    return with_transfer_syntax(first[:end], DEFLATED)


def with_transfer_syntax(prefix: Source | memoryview, syntax: str) -> bytes:
    """The preamble and meta group `prefix` with (0002,0010) set to `syntax` and the group length
    (0002,0000) recomputed; every other element is copied as it was."""
    uid = syntax.encode("ascii")
    uid += b"\x00" * (len(uid) % 2)  # UI values are padded with NUL to even length (PS3.5 6.2)
    elements = b"".join(
        _element(tag, vr, uid if tag == _TRANSFER_SYNTAX else value)
        for tag, vr, value in _meta_elements(prefix)
        if tag != _GROUP_LENGTH
    )
    return bytes(prefix[:_PREFIX]) + _element(_GROUP_LENGTH, b"UL", struct.pack("<I", len(elements))) + elements


def _meta_elements(data: Source | memoryview) -> Iterator[tuple[int, bytes, bytes]]:
    """(tag, VR, value) of each File Meta element (group 0002, always explicit VR little endian)."""
    if len(data) < _PREFIX or bytes(data[128:_PREFIX]) != b"DICM":
        raise ValueError("not Part 10")
    position = _PREFIX
    while position + 8 <= len(data):
        group, element, vr, short = struct.unpack_from("<HH2sH", data, position)
        if group != 0x0002:
            return
        if vr in _LONG_VR_BYTES:
            (length,) = struct.unpack_from("<I", data, position + 8)
            start = position + 12
        else:
            length, start = short, position + 8
        if start + length > len(data):
            raise ValueError("meta element past the end")
        yield group << 16 | element, vr, bytes(data[start : start + length])
        position = start + length


def meta_end(data: Source | memoryview) -> int:
    """Where the File Meta Information of `data` ends (ValueError when it is not Part 10)."""
    return _end_of(list(_meta_elements(data)))


def _end_of(elements: list[tuple[int, bytes, bytes]]) -> int:
    return _PREFIX + sum(len(_element(tag, vr, value)) for tag, vr, value in elements)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VR_BYTES:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value

"""The three UIDs a C-STORE needs from a Part 10 object's file meta group, read with struct.

The gateway sends each fetched object as it is: it needs only the SOP class, the SOP instance, the
transfer syntax and where the data set starts. pydicom's reading of the meta group (`read_preamble`,
`read_dataset` up to the first element outside group 0002, then three attributes) cost 120-150 us
per 527 KB CT, about a tenth of the sending thread's CPU in `make bench`. A meta group as PS3.10 7.1
writes it (preamble, "DICM", group 0002 in Explicit VR Little Endian, the three UIDs conformant) is
read here; anything else (no preamble, a VR that is not two capitals, a UID padded otherwise than
with one NUL, an element missing) returns None and is read by pydicom as before.
"""

from __future__ import annotations

import struct

from services.common.dicom.header_walk import LONG_VR_BYTES
from services.common.dicom.uids import is_conformant_uid
from services.gateway.fetched import Fetched

# PS3.10 7.1: 128 bytes of preamble, then the prefix.
_PREAMBLE, _PREFIX = 128, b"DICM"
_SOP_CLASS, _SOP_INSTANCE, _SYNTAX = 0x0002, 0x0003, 0x0010  # (0002,0002), (0002,0003), (0002,0010)
_WANTED = frozenset({_SOP_CLASS, _SOP_INSTANCE, _SYNTAX})
# What is looked at: a meta group is a few hundred bytes (a longer one is pydicom's).
HEAD_BYTES = 16 * 1024


def _uid(value: bytes) -> str | None:
    if value.endswith(b"\x00"):
        value = value[:-1]
    if not value.isascii():
        return None
    text = value.decode("ascii")
    return text if is_conformant_uid(text) else None


def plain_meta(head: bytes | memoryview) -> tuple[str, str, str, int] | None:
    """(SOP class, SOP instance, transfer syntax, offset of the data set) from the object's first
    bytes, or None when its meta group is not a plain one (see the module's docstring)."""
    head = bytes(head[:HEAD_BYTES]) if isinstance(head, memoryview) else head
    if head[_PREAMBLE : _PREAMBLE + 4] != _PREFIX:
        return None
    offset, end = _PREAMBLE + 4, len(head)
    found: dict[int, str] = {}
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", head, offset)
        if group != 0x0002:
            break
        vr = head[offset + 4 : offset + 6]
        if not (vr.isalpha() and vr.isupper()):
            return None
        if vr in LONG_VR_BYTES:
            if offset + 12 > end:
                return None
            (length,) = struct.unpack_from("<I", head, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", head, offset + 6)
            start = offset + 8
        if length == 0xFFFFFFFF or start + length > end:
            return None
        if element in _WANTED:
            if element in found or vr != b"UI":
                return None
            uid = _uid(head[start : start + length])
            if uid is None:
                return None
            found[element] = uid
        offset = start + length
    else:
        return None  # the data set does not start within the head: pydicom reads it
    if len(found) != len(_WANTED):
        return None
    return found[_SOP_CLASS], found[_SOP_INSTANCE], found[_SYNTAX], offset


def plain_meta_of(source: Fetched) -> tuple[str, str, str, int] | None:
    """`plain_meta` of a fetched object, in memory or on disk."""
    if source.data is not None:
        return plain_meta(memoryview(source.data)[:HEAD_BYTES])
    with source.open() as handle:
        return plain_meta(handle.read(HEAD_BYTES))

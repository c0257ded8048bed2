"""Encode a header, copying the original bytes of every element nobody touched.

pydicom's writer costs about 25 µs per element even when it only copies raw bytes (a buffer per
element); here an untouched element costs one struct.pack. Changed elements, whose values are
Python objects, still go through pydicom's writer so that VR rules, padding and character sets
stay pydicom's job. Sequences are written with undefined length (PS3.5 7.5.2), always valid.
"""

from __future__ import annotations

import struct

from pydicom import charset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# Values this engine writes are strings; these VRs (PS3.5 6.2: the text ones) need no more than joining,
# encoding and padding. Also what the two paths take for text when they compare values.
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # PS3.5 6.1.2.3
_IMPLICIT_HEADER = struct.Struct("<HHI").pack
_LONG_HEADER = struct.Struct("<HH2sHI").pack
_SHORT_HEADER = struct.Struct("<HH2sH").pack
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def encode_body(ds: Dataset, implicit: bool) -> bytes:
    """The dataset body, little endian, in the VR mode of the input it was read from."""
    out = bytearray()
    _encode(ds, out, implicit, _encodings(ds, None))
    return bytes(out)


def encode_file_meta(meta: FileMetaDataset) -> bytes:
    """Preamble, "DICM" and group 0002 with its group length (PS3.10 7.1), explicit VR little endian."""
    body = bytearray()
    _encode(meta, body, False, ["iso8859"])
    return framed_file_meta(bytes(body))


def framed_file_meta(group_0002: bytes) -> bytes:
    """Preamble, "DICM" and the group length in front of already encoded group 0002 elements."""
    return b"\x00" * 128 + b"DICM" + _LONG_HEADER(0x0002, 0x0000, b"UL", 4, len(group_0002)) + group_0002


def _encode(ds: Dataset, out: bytearray, implicit: bool, encodings: list[str]) -> None:
    codecs = charset.convert_encodings(encodings)
    codec = codecs[0] if len(codecs) == 1 else None
    elements = ds._dict
    for tag in sorted(elements, key=int):  # int keys sort as the tags do, without BaseTag.__lt__
        if tag & 0xFFFF == 0 and tag >> 16 > 0x0002:
            continue  # group lengths are retired (PS3.5 7.2)
        elem = elements[tag]
        if isinstance(elem, RawDataElement) and elem.value is None:
            elem = ds.get_item(tag)  # a deferred read, as get_item would do
        if isinstance(elem, RawDataElement):
            if _copy_raw(elem, out, implicit):
                continue
            elem = ds[tag]
        if elem.VR == "SQ":
            _encode_sequence(elem, out, implicit, encodings)
        elif not _copy_string(elem, out, implicit, codec):
            out += _with_pydicom(elem, implicit, encodings)


def _copy_raw(raw: RawDataElement, out: bytearray, implicit: bool) -> bool:
    """Copy a raw element's original bytes; False when it must be re-encoded instead."""
    value = raw.value
    if (
        value is None
        or raw.length == UNDEFINED
        or raw.is_implicit_VR != implicit
        or not raw.is_little_endian
        or raw.is_buffered
    ):
        return False
    return _write(raw.tag, raw.VR, value, out, implicit)


def _write(tag: int, vr: str | None, value: bytes, out: bytearray, implicit: bool) -> bool:
    """Write one element with a definite length; False (nothing written) when the VR cannot say how."""
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        out += _IMPLICIT_HEADER(group, element, len(value))
    elif vr in _LONG_VRS:
        out += _LONG_HEADER(group, element, vr.encode("ascii"), 0, len(value))
    elif vr and len(value) <= 0xFFFF:
        out += _SHORT_HEADER(group, element, vr.encode("ascii"), len(value))
    else:
        return False
    out += value
    return True


def _copy_string(elem: DataElement, out: bytearray, implicit: bool, codec: str | None) -> bool:
    """Encode a plain string value (what this engine writes); False for anything pydicom must do."""
    vr = elem.VR
    if vr not in STRING_VRS:
        return False
    value = elem.value
    if value is None:
        text = ""
    elif isinstance(value, str | PersonName):
        text = str(value)
    elif isinstance(value, MultiValue | list) and all(isinstance(v, str | PersonName) for v in value):
        text = "\\".join(str(v) for v in value)
    else:
        return False
    if vr in _CHARSET_VRS:
        if codec is None:
            return False
        try:
            data = text.encode(codec)
        except (UnicodeEncodeError, LookupError):
            return False
    elif text.isascii():
        data = text.encode("ascii")
    else:
        return False
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return _write(elem.tag, vr, data, out, implicit)  # as _copy_raw of these bytes would


def _encode_sequence(elem: DataElement, out: bytearray, implicit: bool, encodings: list[str]) -> None:
    group, element = elem.tag >> 16, elem.tag & 0xFFFF
    if implicit:
        out += struct.pack("<HHI", group, element, UNDEFINED)
    else:
        out += struct.pack("<HH2sHI", group, element, b"SQ", 0, UNDEFINED)
    for item in elem.value or ():
        out += _ITEM
        _encode(item, out, implicit, _encodings(item, encodings))
        out += _ITEM_END
    out += _SEQUENCE_END


def _with_pydicom(elem: DataElement, implicit: bool, encodings: list[str]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_data_element(buffer, elem, encodings)
    return buffer.getvalue()


def _encodings(ds: Dataset, parent: list[str] | None) -> list[str]:
    """The item's own Specific Character Set, else the enclosing one (PS3.5 7.5.3)."""
    if 0x00080005 not in ds:
        return parent or ["iso8859"]
    value = ds[0x00080005].value
    if not value:
        return parent or ["iso8859"]
    return [str(v) for v in value] if not isinstance(value, str) else [value]

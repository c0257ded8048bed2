"""A Part 10 header as plain Python: elements whose values stay bytes, items as tag → element dicts.

The fast path of the engine (raw_engine.py) works on this instead of pydicom datasets: building a
pydicom Dataset per item and converting values costs more than de-identifying them. Only the common
encodings are read here: little endian with explicit or implicit VR (native or encapsulated pixel
data), tags in ascending order, definite lengths except for sequences and items, nothing after Pixel
Data.
Anything else raises ``Unsupported`` and the instance goes through the pydicom path instead, which
reads every encoding pydicom can.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import DicomDictionary
from pydicom.uid import UID

from .container import ITEM, PIXEL_TAGS, SEQUENCE_DELIMITER, UNDEFINED, Source, _pixel_element_end
from .encoder import _IMPLICIT_HEADER, _ITEM, _ITEM_END, _LONG_HEADER, _LONG_VRS, _SEQUENCE_END, _SHORT_HEADER

ITEM_END = 0xFFFEE00D
LONG_VRS = _LONG_VRS
SHORT_VRS = frozenset(
    {
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "SL",
        "SS",
        "ST",
        "TM",
        "UI",
        "UL",
        "US",
    }
)
_KNOWN_VRS = {vr.encode("ascii"): vr for vr in LONG_VRS | SHORT_VRS}
_TAG_VR = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG_LENGTH = struct.Struct("<HHI")


class Unsupported(Exception):
    """This input (or this profile) needs the pydicom path; never an error for the caller."""


@dataclass(slots=True)
class Element:
    tag: int
    vr: str
    value: bytes  # the value bytes as stored (even length); empty for sequences
    items: list[dict[int, Element]] | None = None  # sequences only


Items = dict[int, Element]


@dataclass(frozen=True)
class RawFile:
    body: Items
    transfer_syntax: str
    media_sop_instance_uid: str
    pixel_bytes: memoryview  # the whole Pixel Data element, tag to end of file (may be empty)
    compressed: bool  # encapsulated pixel data (its fragments may carry text segments)
    implicit: bool  # implicit VR little endian: VRs come from the data dictionary, as pydicom does


def read(data: Source) -> RawFile:
    """Parse the header of ``data``; raises Unsupported for anything outside the common encoding."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise Unsupported("no preamble")
    meta, position = _read_meta(data, 132)
    syntax = _text(meta.get(0x00020010))
    if syntax not in UID_dictionary:  # unknown or damaged: the pydicom path explains (and warns about) it
        raise Unsupported("transfer syntax")
    uid = UID(syntax)
    if not (uid.is_transfer_syntax and uid.is_little_endian and not uid.is_deflated):
        raise Unsupported("transfer syntax")
    implicit = bool(uid.is_implicit_VR)
    body, position = _read_items(data, position, len(data), _TOP, implicit)
    end = _pixel_element_end(data, position, implicit)
    if end != len(data):
        raise Unsupported("something other than one Pixel Data element after the header")
    media_uid = _text(meta.get(0x00020003))
    return RawFile(body, syntax, media_uid, memoryview(data)[position:], uid.is_compressed, implicit)


def _read_meta(data: Source, position: int) -> tuple[dict[int, bytes], int]:
    meta: dict[int, bytes] = {}
    while position + 8 <= len(data):
        group, element, vr_bytes = _TAG_VR.unpack_from(data, position)
        if group != 0x0002:
            break
        vr = _KNOWN_VRS.get(vr_bytes)
        if vr is None:
            raise Unsupported("file meta VR")
        if vr in LONG_VRS:
            (length,) = _U32.unpack_from(data, position + 8)
            start = position + 12
        else:
            (length,) = _U16.unpack_from(data, position + 6)
            start = position + 8
        if length == UNDEFINED or start + length > len(data):
            raise Unsupported("file meta length")
        meta[group << 16 | element] = data[start : start + length]
        position = start + length
    return meta, position


_TOP, _DELIMITED, _DEFINED = 0, 1, 2  # where a run of elements ends: Pixel Data, an item delimiter, a length


def _read_items(data: Source, position: int, end: int, mode: int, implicit: bool = False) -> tuple[Items, int]:
    """Elements from ``position``: at the top up to Pixel Data, in an item up to its delimiter or end."""
    elements: Items = {}
    previous = -1
    known = _KNOWN_VRS
    while position < end:
        if position + 8 > end:
            raise Unsupported("truncated element")
        if implicit:
            group, element, length = _TAG_LENGTH.unpack_from(data, position)
        else:
            group, element, vr_bytes = _TAG_VR.unpack_from(data, position)
        tag = group << 16 | element
        if mode == _DELIMITED and tag == ITEM_END:
            return elements, position + 8
        if mode == _TOP and tag in PIXEL_TAGS:
            return elements, position
        if tag <= previous or group == 0xFFFE or group == 0x0002:
            raise Unsupported("tag order")
        previous = tag
        if implicit:
            vr = implicit_vr(tag, length)
            start = position + 8
        else:
            found = known.get(vr_bytes)
            if found is None:
                raise Unsupported("VR")
            vr = found
            if vr in LONG_VRS:
                if position + 12 > end:
                    raise Unsupported("truncated element")
                (length,) = _U32.unpack_from(data, position + 8)
                start = position + 12
            else:
                (length,) = _U16.unpack_from(data, position + 6)
                start = position + 8
        if vr == "SQ" or (implicit and length == UNDEFINED):
            items, position = _read_sequence(data, start, length, end, implicit)
            elements[tag] = Element(tag, vr, b"", items)
            continue
        if length == UNDEFINED or start + length > end:
            raise Unsupported("element length")
        elements[tag] = Element(tag, vr, data[start : start + length])
        position = start + length
    if mode == _DELIMITED:
        raise Unsupported("item without delimiter")
    return elements, position


def implicit_vr(tag: int, length: int) -> str:
    """The VR the pydicom path sees for an implicit VR element: the data dictionary's (even an ambiguous
    "US or SS"), "UN" for tags it does not know. A private element of undefined length is a sequence: it
    stays "UN" here too, its items read (identifiers in them are collected, as the pydicom path collects
    them; the element itself is then removed or kept whole)."""
    entry = DicomDictionary.get(tag)
    if entry is None:
        if length == UNDEFINED and not (tag >> 16) & 1:
            raise Unsupported("an unknown standard element of undefined length")
        return "UN"
    if length == UNDEFINED and entry[0] != "SQ":
        raise Unsupported("undefined length on an element that is no sequence")
    return str(entry[0])


def _read_sequence(
    data: Source, position: int, length: int, end: int, implicit: bool = False
) -> tuple[list[Items], int]:
    stop = end if length == UNDEFINED else position + length
    if stop > end:
        raise Unsupported("sequence length")
    items: list[Items] = []
    while position < stop:
        if position + 8 > stop:
            raise Unsupported("truncated item")
        group, element, item_length = _TAG_LENGTH.unpack_from(data, position)
        tag = group << 16 | element
        position += 8
        if tag == SEQUENCE_DELIMITER:
            if length != UNDEFINED:
                raise Unsupported("delimiter in a sequence of defined length")
            return items, position
        if tag != ITEM:
            raise Unsupported("not an item")
        if item_length == UNDEFINED:
            item, position = _read_items(data, position, stop, _DELIMITED, implicit)
        else:
            if position + item_length > stop:
                raise Unsupported("item length")
            item, position = _read_items(data, position, position + item_length, _DEFINED, implicit)
        items.append(item)
    if length == UNDEFINED:
        raise Unsupported("sequence without delimiter")
    return items, position


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace").strip(" \x00") if value else ""


def encode(elements: Items, out: bytearray, implicit: bool = False) -> None:
    """Little endian, ascending tags, in the input's VR mode; sequences and items of undefined length
    (PS3.5 7.5.2)."""
    for tag in sorted(elements):
        if tag & 0xFFFF == 0 and tag >> 16 > 0x0002:
            continue  # group lengths are retired (PS3.5 7.2)
        elem = elements[tag]
        group, element = tag >> 16, tag & 0xFFFF
        if elem.items is not None:
            out += (
                _IMPLICIT_HEADER(group, element, UNDEFINED)
                if implicit
                else _LONG_HEADER(group, element, b"SQ", 0, UNDEFINED)
            )
            for item in elem.items:
                out += _ITEM
                encode(item, out, implicit)
                out += _ITEM_END
            out += _SEQUENCE_END
            continue
        value = elem.value
        if implicit:
            out += _IMPLICIT_HEADER(group, element, len(value))
        elif elem.vr in LONG_VRS:
            out += _LONG_HEADER(group, element, elem.vr.encode("ascii"), 0, len(value))
        elif elem.vr in SHORT_VRS and len(value) <= 0xFFFF:
            out += _SHORT_HEADER(group, element, elem.vr.encode("ascii"), len(value))
        else:
            raise Unsupported("a value its VR cannot carry")
        out += value

"""The top level of an explicit VR little endian data set, walked over its bytes without pydicom.

The fast path of header inspection (header.py): parsing the header with pydicom costs about 1 ms per
CT instance, most of ingest's header work, for a handful of top-level values. This walk reads only
those values and checks the structure pydicom would read: every element's VR is a standard one, lengths
stay inside their container, sequences (PS3.5 7.5) hold items closed where their lengths or delimiters
say, top-level tags ascend, and nesting stays within the depth limit.

It answers only for the common encoding and for well-formed structure; anything else (an unknown VR,
an undefined length outside a sequence or item, a delimiter out of place, a Specific Character Set
inside an item, trailing bytes) gives None, and the caller reads the input with pydicom, which
decides, with its reasons, whether it is usable. So this walk may refuse more than pydicom, never less.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection
from dataclasses import dataclass

Source = bytes | bytearray | memoryview | mmap.mmap

_HEADER = struct.Struct("<HH2sH")
_ITEM_HEADER = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
# Explicit VR (PS3.5 7.1.2): a 2-byte length, or 2 reserved bytes and a 4-byte length.
SHORT_VR_BYTES = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
LONG_VR_BYTES = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_SPECIFIC_CHARACTER_SET = 0x00080005
_LAST_META_TAG = 0x0002FFFF


@dataclass(frozen=True)
class TopLevel:
    """`values`: the wanted top-level elements present, as their raw value bytes. `pixel_data_at`: the
    offset of the top-level Pixel Data (or float / double float pixel data) element, or None when the
    data set ran to the end of the input without one."""

    values: dict[int, bytes]
    pixel_data_at: int | None


class _Irregular(Exception):
    """Outside what this walk reads: the caller asks pydicom."""


class ElementBudget:
    """A number of elements that may be taken, and no more: what a byte walk may pass (every element and
    item: its time), or what a pydicom read may hold (header.py `_check_structure`: its memory)."""

    def __init__(self, units: int) -> None:
        self.left = units

    def take(self, units: int) -> bool:
        """False once more has been taken than the budget holds."""
        self.left -= units
        return self.left >= 0


def read_top_level(
    data: Source, offset: int, wanted: Collection[int], max_depth: int, max_walked: int
) -> TopLevel | None:
    """Walk the data set starting at `offset` up to the top-level pixel data or the end; None when the
    input is irregular in any way this walk does not follow (see the module doc), or has more than
    `max_walked` elements and items in all (the caller's slower checks then refuse it)."""
    try:
        return _top_level(data, offset, wanted, max_depth, max_walked)
    except (_Irregular, struct.error):
        return None


def _top_level(data: Source, offset: int, wanted: Collection[int], max_depth: int, max_walked: int) -> TopLevel:
    size, previous = len(data), _LAST_META_TAG
    values: dict[int, bytes] = {}
    budget = ElementBudget(max_walked)
    while offset < size:
        group, element, vr, short_length = _HEADER.unpack_from(data, offset)
        tag = group << 16 | element
        if tag in _PIXEL_TAGS:
            return TopLevel(values, offset)
        budget.left -= 1  # budget.take(1), inline: the hot path's one per top-level element
        if tag <= previous or group == 0xFFFE or budget.left < 0:
            raise _Irregular
        previous = tag
        start, length = _value_position(data, offset, vr, short_length)
        if vr == b"SQ":
            if tag in wanted:
                raise _Irregular
            offset = _sequence_end(data, start, length, size, 1, max_depth, budget)
            continue
        end = start + length
        if length == _UNDEFINED or end > size:
            raise _Irregular
        if tag in wanted:
            values[tag] = bytes(data[start:end])
        offset = end
    return TopLevel(values, None)


def _value_position(data: Source, offset: int, vr: bytes, short_length: int) -> tuple[int, int]:
    if vr in SHORT_VR_BYTES:
        return offset + 8, short_length
    if vr in LONG_VR_BYTES:
        return offset + 12, _U32.unpack_from(data, offset + 8)[0]
    raise _Irregular


def _sequence_end(
    data: Source, offset: int, length: int, outer_end: int, depth: int, max_depth: int, budget: ElementBudget
) -> int:
    """Where the sequence whose value starts at `offset` ends (after its delimiter when undefined); its
    items and their elements taken from `budget`."""
    if depth > max_depth:
        raise _Irregular
    undefined = length == _UNDEFINED
    end = outer_end if undefined else offset + length
    if end > outer_end:
        raise _Irregular
    while offset < end:
        if offset + 8 > end:
            raise _Irregular
        group, element, item_length = _ITEM_HEADER.unpack_from(data, offset)
        tag = group << 16 | element
        offset += 8
        if tag == _SEQUENCE_END and undefined and item_length == 0:
            return offset
        if tag != _ITEM or not budget.take(1):
            raise _Irregular
        if item_length == _UNDEFINED:
            offset = _item_end(data, offset, end, None, depth, max_depth, budget)
        else:
            item_end = offset + item_length
            if item_end > end:
                raise _Irregular
            offset = _item_end(data, offset, item_end, item_end, depth, max_depth, budget)
    if undefined or offset != end:
        raise _Irregular
    return offset


def _item_end(
    data: Source,
    offset: int,
    end: int,
    defined_end: int | None,
    depth: int,
    max_depth: int,
    budget: ElementBudget,
) -> int:
    """Where the item whose elements start at `offset` ends: at `defined_end`, or after its delimiter."""
    while defined_end is None or offset < defined_end:
        if offset + 8 > end:
            raise _Irregular
        group, element, vr, short_length = _HEADER.unpack_from(data, offset)
        tag = group << 16 | element
        if tag == _ITEM_END and defined_end is None:
            if _U32.unpack_from(data, offset + 4)[0] != 0:
                raise _Irregular
            return offset + 8
        if group == 0xFFFE or tag == _SPECIFIC_CHARACTER_SET or not budget.take(1):
            raise _Irregular
        start, length = _value_position(data, offset, vr, short_length)
        if vr == b"SQ":
            offset = _sequence_end(data, start, length, end, depth + 1, max_depth, budget)
            continue
        offset = start + length
        if length == _UNDEFINED or offset > end:
            raise _Irregular
    if offset != defined_end:
        raise _Irregular
    return offset

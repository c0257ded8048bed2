"""Text that compressed pixel data can carry besides the image: the leak check reads it too.

A JPEG or JPEG-LS frame may hold comment (COM) and application (APPn: JFIF, Exif, ...) segments
before its scan, and a JPEG 2000 codestream comment (COM) markers in its main header; encoders put
names, dates and device identities there. Only these segments are returned, never the entropy-coded
image data: random bytes there would match short identifiers by chance and quarantine good images.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .container import ITEM, UNDEFINED

_TAG_LENGTH = struct.Struct("<HHI")
_BIG_U16 = struct.Struct(">H")
_JPEG_TEXT_MARKERS = frozenset({0xFE, *range(0xE0, 0xF0)})  # COM, APP0-APP15
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RSTn: no length
_J2K_COM, _J2K_SOT, _J2K_SOD, _J2K_EOC = 0xFF64, 0xFF90, 0xFF93, 0xFFD9


def embedded_text_of_element(element: bytes | memoryview, implicit: bool) -> bytes:
    """For a whole Pixel Data element (tag to end): the text segments of its fragments, if encapsulated."""
    if len(element) < 12:
        return b""
    if implicit:
        (length,) = struct.unpack_from("<I", element, 4)
        start = 8
    else:
        (length,) = struct.unpack_from("<I", element, 8)
        start = 12
    if length != UNDEFINED:
        return b""  # native pixel data: sample values, no segments
    return embedded_text_of_value(memoryview(element)[start:])


def embedded_text_of_value(value: bytes | memoryview) -> bytes:
    """For an encapsulated Pixel Data value (items, PS3.5 A.4): the text segments of every fragment."""
    found: list[bytes] = []
    position, first = 0, True
    while position + 8 <= len(value):
        group, element, length = _TAG_LENGTH.unpack_from(value, position)
        tag = group << 16 | element
        position += 8
        if tag != ITEM or length == UNDEFINED:
            break  # the sequence delimiter, or something that is not an item: nothing more to read
        fragment = bytes(value[position : position + length])
        position += length
        if first:  # the Basic Offset Table: offsets only
            first = False
            continue
        found.extend(_jpeg_segments(fragment) if fragment[:2] == b"\xff\xd8" else _j2k_comments(fragment))
    return b"\n".join(found)


def _jpeg_segments(fragment: bytes) -> list[bytes]:
    """COM and APPn payloads before the first scan (ITU T.81 B.1)."""
    return [
        fragment[start + 4 : end] for marker, start, end in _header_segments(fragment) if marker in _JPEG_TEXT_MARKERS
    ]


def _header_segments(fragment: bytes | memoryview) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment with a length before a JPEG fragment's first scan (ITU T.81
    B.1), fill bytes and standalone markers passed over; `end` as its length says, which a malformed or
    cut-off segment puts before its payload or past the fragment."""
    position = 2
    while position + 4 <= len(fragment):
        if fragment[position] != 0xFF:
            break
        marker = fragment[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan, end of image
            break
        (length,) = _BIG_U16.unpack_from(fragment, position + 2)
        yield marker, position, position + 2 + length
        position += 2 + length


def _j2k_comments(fragment: bytes) -> list[bytes]:
    """COM payloads of a JPEG 2000 main header (ITU T.800 A.9.2), after its two-byte registration."""
    if fragment[:2] != b"\xff\x4f":
        return []
    comments = []
    position = 2
    while position + 4 <= len(fragment):
        (marker,) = _BIG_U16.unpack_from(fragment, position)
        if marker in (_J2K_SOT, _J2K_SOD, _J2K_EOC) or marker >> 8 != 0xFF:
            break
        (length,) = _BIG_U16.unpack_from(fragment, position + 2)
        if marker == _J2K_COM:
            comments.append(fragment[position + 6 : position + 2 + length])
        position += 2 + length
    return comments


# Removed: COM, APP1 (Exif, with its dates, camera owner and GPS, and XMP) and APP13 (IPTC): text and
# metadata about the picture, not the picture. Other APPn stay, as decoders may need them (APP0 JFIF, APP2
# the ICC colour profile, APP8 JPEG-LS's colour transform, APP14 Adobe's); the leak check still reads them.
_JPEG_STRIPPED = frozenset({0xFE, 0xE1, 0xED})


def without_text_segments(value: bytes | memoryview) -> bytes | None:
    """An encapsulated Pixel Data value (items, PS3.5 A.4) with the COM, APP1 and APP13 segments of its
    JPEG fragments removed, each changed fragment kept of even length (`_cut`), and the Basic Offset
    Table's offsets moved to match (emptied when they name something else: an empty table is valid);
    None when there is nothing to remove."""
    plan = _stripping_plan(value)
    if plan is None:
        return None
    items, tail, cuts = plan
    fragments = [_cut(fragment, ranges) for fragment, ranges in zip(items[1:], cuts, strict=True)]
    table = _moved_offsets(bytes(items[0]), [len(f) for f in items[1:]], [len(f) for f in fragments]) or b""
    out = bytearray()
    for item in (table, *fragments):
        out += _TAG_LENGTH.pack(ITEM >> 16, ITEM & 0xFFFF, len(item)) + item
    return bytes(out + tail)


def has_text_segments(element: bytes | memoryview, implicit: bool) -> bool:
    """For a whole Pixel Data element: whether `without_text_segments` would change its value (read in
    place: nothing of the pixel data is copied)."""
    start = _value_start(element, implicit)
    return start is not None and _stripping_plan(memoryview(element)[start:]) is not None


def _stripping_plan(
    value: bytes | memoryview,
) -> tuple[list[memoryview], bytes, list[list[tuple[int, int]]]] | None:
    """(the items, what follows them, each fragment's byte ranges to remove), or None when nothing is
    removed."""
    view = memoryview(value)
    items: list[memoryview] = []
    position, tail = 0, b""
    while position + 8 <= len(view):
        group, element, length = _TAG_LENGTH.unpack_from(view, position)
        if (group << 16 | element) != ITEM or length == UNDEFINED:
            tail = bytes(view[position:])
            break
        items.append(view[position + 8 : position + 8 + length])
        position += 8 + length
    if len(items) < 2:
        return None
    cuts = [_stripped_ranges(fragment) if fragment[:2] == b"\xff\xd8" else [] for fragment in items[1:]]
    if not any(cuts):
        return None
    return items, tail, cuts


def _stripped_ranges(fragment: memoryview) -> list[tuple[int, int]]:
    """The byte ranges of the fragment's segments to remove, before its first scan (ITU T.81 B.1)."""
    ranges = []
    for marker, start, end in _header_segments(fragment):
        if end - start < 4 or end > len(fragment):
            break  # malformed, or running on into the next fragment: the rest is left as it is
        if marker in _JPEG_STRIPPED:
            ranges.append((start, end))
    return ranges


def _cut(fragment: memoryview, ranges: list[tuple[int, int]]) -> bytes:
    """The fragment without `ranges`; itself when `ranges` is empty. A fragment is of even length (PS3.5
    A.4): an odd count removed is made up by a fill byte 0xFF before the marker after the last cut (ITU
    T.81 B.1.1.2), not by a pad at the end, which in a frame split over fragments would sit inside the
    entropy-coded data and change the image."""
    if not ranges:
        return bytes(fragment)
    kept = bytearray()
    position = 0
    for start, end in ranges:
        kept += fragment[position:start]
        position = end
    if (len(fragment) - sum(end - start for start, end in ranges)) % 2:
        kept += b"\xff"
    kept += fragment[position:]
    return bytes(kept)


def _moved_offsets(table: bytes, old: list[int], new: list[int]) -> bytes | None:
    """The Basic Offset Table for fragments of sizes `new` that were `old`: each frame's offset (of its
    first fragment's item, from the first fragment's) moved by what the fragments before it lost. None:
    a table that names something other than a fragment's start."""
    if not table:
        return table
    starts: dict[int, int] = {}
    position = moved = 0
    for before, after in zip(old, new, strict=True):
        starts[position] = position - moved
        position += 8 + before
        moved += before - after
    offsets = struct.unpack(f"<{len(table) // 4}I", table)
    if any(offset not in starts for offset in offsets):
        return None
    return struct.pack(f"<{len(offsets)}I", *(starts[offset] for offset in offsets))


def without_text_segments_of_element(element: bytes | memoryview, implicit: bool) -> bytes | None:
    """`without_text_segments` for a whole Pixel Data element (tag to end)."""
    start = _value_start(element, implicit)
    if start is None:
        return None
    value = without_text_segments(memoryview(element)[start:])
    return None if value is None else bytes(element[:start]) + value


def _value_start(element: bytes | memoryview, implicit: bool) -> int | None:
    """Where an encapsulated Pixel Data element's value starts (None: not encapsulated)."""
    if len(element) < 12:
        return None
    (length,) = struct.unpack_from("<I", element, 4 if implicit else 8)
    return (8 if implicit else 12) if length == UNDEFINED else None

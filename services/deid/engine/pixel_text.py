"""Text that compressed pixel data can carry besides the image: the leak check reads it too.

A JPEG or JPEG-LS frame may hold comment (COM) and application (APPn: JFIF, Exif, ...) segments
before its scan, and a JPEG 2000 codestream comment (COM) markers in its main header; encoders put
names, dates and device identities there. Only these segments are returned, never the entropy-coded
image data: random bytes there would match short identifiers by chance and quarantine good images.
"""

from __future__ import annotations

import struct

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
    segments = []
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
        if marker in _JPEG_TEXT_MARKERS:
            segments.append(fragment[position + 4 : position + 2 + length])
        position += 2 + length
    return segments


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

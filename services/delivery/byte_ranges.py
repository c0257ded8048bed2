"""Conditional and partial retrieval of one instance (RFC 9110 §13-14), pure: which part of an object a
request asks for, and whether the copy it already holds is this one. A partner whose multi-gigabyte
transfer broke asks for the rest (`Range: bytes=<received>-`, with `If-Range: <ETag>` so it never
splices two different objects), not for the whole again.

The ETag is the object's SHA-256, which the feed already promises (objects are content-addressed and
never rewritten), so it is strong: equal tags mean equal bytes.

Served: one range (`bytes=a-b`, `bytes=a-`, `bytes=-n`). A request for several ranges is answered with
the whole object (RFC 9110 lets a server ignore Range; a multipart/byteranges body inside DICOMweb's own
media types would help nobody), as is one whose Range cannot be parsed, or whose If-Range does not name
this object (a date: no Last-Modified is given, so it cannot match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# At most 18 digits each, past any object's size (int() of thousands of digits raised: a 500).
_ONE_RANGE = re.compile(r"bytes[ \t]*=[ \t]*(\d{0,18})[ \t]*-[ \t]*(\d{0,18})[ \t]*", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    """416: the range starts at or past the object's end."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as Content-Range writes it

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def entity_tag(sha256: str) -> str:
    return f'"{sha256}"'


def none_match(if_none_match: str | None, etag: str) -> bool:
    """True when If-None-Match names this object (or `*`): the partner's copy is current, a 304."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    # Weak comparison (§13.1.2): W/"x" matches "x".
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def requested_range(range_header: str | None, if_range: str | None, etag: str, size: int) -> ByteRange | None:
    """The one range to send, or None for the whole object; RangeNotSatisfiable for a 416."""
    if range_header is None:
        return None
    if if_range is not None and if_range.strip() != etag:  # strong comparison only (§13.1.5)
        return None
    match = _ONE_RANGE.fullmatch(range_header)
    if match is None:
        return None  # several ranges, another unit, or not a range at all
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last `last` bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("an empty suffix")
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored, as RFC 9110 §14.2 says
    if start >= size:
        raise RangeNotSatisfiable("the range starts past the object's end")
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)

"""What a DICOMweb answer looks like on the wire: content negotiation (the Accept header) and the
multipart/related framing of WADO-RS, streamed from files in chunks. Pure apart from reading files.

PS3.18 §8.7 (content negotiation) and §8.7.3.5 (transfer-syntax parameter). The objects are served
exactly as stored (the partner checks their SHA-256 against its feed), so the only transfer syntax on
offer for an object is the one it was delivered in: `transfer-syntax=*` or that UID is served, any
other is a conversion this server does not do (406). An absent transfer-syntax parameter is taken as
"as stored" too: the standard's default (Explicit VR Little Endian) would mean rewriting the bytes
the SHA-256 in the feed promises; Orthanc and dcm4chee answer the same way.
"""

from __future__ import annotations

import enum
import functools
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.common.blob_splices import Extent

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"
CHUNK_BYTES = 1024 * 1024


class Representation(enum.Enum):
    SINGLE = DICOM  # one Part 10 file as the body
    MULTIPART = MULTIPART  # multipart/related; type="application/dicom", one part per file


@dataclass(frozen=True)
class MediaRange:
    media_type: str  # lower case, e.g. "multipart/related"
    params: dict[str, str] = field(default_factory=dict)  # names lower case, values unquoted
    q: float = 1.0


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first (q=0 ones dropped; ties keep order)."""
    ranges = []
    for item in _split_outside_quotes(header or "", ","):
        media_type, *raw_params = _split_outside_quotes(item, ";")
        media_type = media_type.strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        for raw in raw_params:
            name, _, value = raw.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _transfer_syntax_ok(wanted: MediaRange, stored: frozenset[str]) -> bool:
    asked = wanted.params.get("transfer-syntax", "*")
    return asked == "*" or stored <= {asked}


def choose_representation(accept: str | None, stored_syntaxes: Iterable[str], single: bool) -> Representation | None:
    """How to answer a WADO-RS retrieval, or None (406) when nothing acceptable can be served.

    `single`: the resource is one instance, so a bare `application/dicom` body is possible; a series or
    study can only be multipart. `stored_syntaxes`: the transfer syntaxes the objects are stored in.
    """
    stored = frozenset(stored_syntaxes)
    if accept is not None and len(accept) > _CACHED_ACCEPT_CHARS:
        return _choose(accept, stored, single)
    return _choose_cached(accept, stored, single)


# A partner's gateway sends the same Accept header with every fetch: parsing it each time cost ~24 us
# per retrieval (timeit, the gateway's header, loaded 2-core machine). Remembered per (header, stored
# syntaxes, single), for headers of ordinary length only, so the cache stays small whatever a client sends.
_CACHED_ACCEPT_CHARS = 512


def _choose(accept: str | None, stored: frozenset[str], single: bool) -> Representation | None:
    ranges = parse_accept(accept)
    if not ranges:
        if not _no_preference(accept):
            return None  # every type it names is refused (q=0): nothing it takes is left
        return Representation.SINGLE if single else Representation.MULTIPART
    for wanted in ranges:
        kind = wanted.media_type
        if kind == MULTIPART:
            inner = wanted.params.get("type", DICOM).lower()
            if inner in (DICOM, "application/*", "*/*") and _transfer_syntax_ok(wanted, stored):
                return Representation.MULTIPART
        elif kind == "multipart/*":
            # A transfer syntax asked for here too is one the objects must be in (it was ignored).
            if _transfer_syntax_ok(wanted, stored):
                return Representation.MULTIPART
        elif kind in (DICOM, "application/*"):
            if single and _transfer_syntax_ok(wanted, stored):
                return Representation.SINGLE
        elif kind == "*/*" and _transfer_syntax_ok(wanted, stored):
            return Representation.SINGLE if single else Representation.MULTIPART
    return None


_choose_cached = functools.lru_cache(maxsize=256)(_choose)


def accepts_dicom_json(accept: str | None) -> bool:
    """Metadata and QIDO answer in application/dicom+json only (PS3.18 §8.7.3.2: application/json is
    an accepted synonym)."""
    ranges = parse_accept(accept)
    if not ranges:
        return _no_preference(accept)
    return any(r.media_type in (DICOM_JSON, "application/json", "application/*", "*/*") for r in ranges)


def _no_preference(accept: str | None) -> bool:
    """No Accept, or one naming no type: anything may be answered (RFC 9110 12.5.1). One whose every type
    has q=0 takes nothing: it was answered as if absent."""
    return not (accept or "").replace(",", "").strip()


def new_boundary() -> str:
    # Random, so it cannot occur in a part by chance (a collision with 128 random bits does not happen).
    return f"imx-{secrets.token_hex(16)}"


def multipart_content_type(boundary: str) -> str:
    return f'{MULTIPART}; type="{DICOM}"; boundary={boundary}'


def part_header(boundary: str, transfer_syntax: str, length: int, first: bool) -> bytes:
    """The delimiter and headers before one part (RFC 2046 §5.1.1: the CRLF before a delimiter
    belongs to the delimiter, so only parts after the first begin with one)."""
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return (
        ("" if first else "\r\n") + f"--{boundary}\r\nContent-Type: {DICOM}{syntax}\r\nContent-Length: {length}\r\n\r\n"
    ).encode("ascii")


def closing_delimiter(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")


@dataclass(frozen=True)
class FilePart:
    """One object to send: its file, its size as recorded, the transfer syntax it is stored in. A
    spliced object (services/common/blob_splices.py) is `head`, then the file from `offset` to its end."""

    path: Path
    size: int
    transfer_syntax: str
    head: bytes = b""
    offset: int = 0

    def extent(self) -> Extent:
        return Extent(self.head, self.path, self.offset, self.size - len(self.head))

    def open(self) -> BinaryIO:
        """The object's bytes as one file (OSError when its file is gone or changed size)."""
        return self.extent().open()


def file_chunks(handle: BinaryIO, chunk_bytes: int = CHUNK_BYTES, length: int | None = None) -> Iterator[bytes]:
    """The file from where it stands, `chunk_bytes` at a time: to its end, or `length` bytes of it."""
    left = length
    while left is None or left > 0:
        chunk = handle.read(chunk_bytes if left is None else min(chunk_bytes, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def multipart_body(
    parts: Iterable[FilePart],
    boundary: str,
    on_sent: Callable[[int], None] = lambda _n: None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[bytes]:
    """The whole multipart body, one chunk at a time: memory stays at one chunk whatever the sizes.
    `on_sent(n)` is told of every n bytes of object content (framing not counted) as it is yielded."""
    first = True
    for part in parts:
        with part.open() as handle:
            yield part_header(boundary, part.transfer_syntax, part.size, first)
            first = False
            for chunk in file_chunks(handle, chunk_bytes):
                on_sent(len(chunk))
                yield chunk
    yield closing_delimiter(boundary) if not first else f"--{boundary}--\r\n".encode("ascii")


def single_body(
    part: FilePart,
    on_sent: Callable[[int], None] = lambda _n: None,
    chunk_bytes: int = CHUNK_BYTES,
    start: int = 0,
    length: int | None = None,
) -> Iterator[bytes]:
    """The object's bytes, or `length` of them from `start` (a range), one chunk at a time."""
    with part.open() as handle:
        handle.seek(start)
        for chunk in file_chunks(handle, chunk_bytes, part.size - start if length is None else length):
            on_sent(len(chunk))
            yield chunk

"""Reading a STOW-RS request body: multipart/related; type="application/dicom" (PS3.18 8.6.1.2,
RFC 2387), parsed by python-multipart's streaming parser as the bytes arrive.

Parts are handed out as soon as each one is complete, so the service holds one instance at a time
however many a request carries. A part over the size limit is counted but not kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.common.dicom.part10 import zero_preamble
from services.common.messages import PhiSafeError

DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"


class UnsupportedMediaType(PhiSafeError):
    """The request is not multipart/related of application/dicom parts (HTTP 415)."""


class MalformedMultipart(PhiSafeError):
    """The body does not parse as the multipart its Content-Type announced (HTTP 400)."""


@dataclass(frozen=True)
class Part:
    """One body part. `data` is empty when the part was over the limit (`too_large`)."""

    index: int
    content_type: str  # media type, lower case, without parameters; "" when the part had none
    data: bytes
    size: int
    too_large: bool = False


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS request; raises UnsupportedMediaType or MalformedMultipart."""
    media_type, params = parse_options_header(content_type or "")
    if media_type.decode("latin-1") != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f'Content-Type must be multipart/related; type="{DICOM}" (PS3.18 STOW-RS); '
            "the JSON and XML metadata forms are not supported"
        )
    root_type = params.get(b"type", b"").decode("latin-1").strip().lower()
    if root_type and root_type != DICOM:
        raise UnsupportedMediaType(f'only type="{DICOM}" is supported in multipart/related requests')
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise MalformedMultipart("multipart/related Content-Type has no boundary parameter")
    return boundary


class RelatedPartsReader:
    """Feed the body chunk by chunk; each call returns the parts completed by that chunk."""

    def __init__(self, boundary: bytes, max_part_bytes: int) -> None:
        self._max_part_bytes = max_part_bytes
        self._done: list[Part] = []
        self._count = 0
        self._ended = False
        self._reset_part()
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._reset_part,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
            )
        except Exception as exc:  # an over-long boundary: FormParserError
            raise MalformedMultipart("multipart boundary is not valid") from exc

    def feed(self, chunk: bytes) -> list[Part]:
        if chunk:
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                # The parser's message quotes body bytes, so it is not passed on.
                raise MalformedMultipart("request body is not valid multipart/related") from exc
        return self._take()

    def close(self) -> list[Part]:
        """The last parts; raises MalformedMultipart for a body cut short or one without parts."""
        if not self._ended:
            raise MalformedMultipart("request body ended before the closing multipart boundary")
        if self._count == 0:
            raise MalformedMultipart("request body has no parts")
        return self._take()

    def _take(self) -> list[Part]:
        done, self._done = self._done, []
        return done

    def _reset_part(self) -> None:
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data = bytearray()
        self._size = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field, self._value = bytearray(), bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._size > self._max_part_bytes:
            self._data = bytearray()  # counted, not kept
        else:
            self._data += data[start:end]

    def _on_part_end(self) -> None:
        media_type, _ = parse_options_header(self._headers.get("content-type", ""))
        too_large = self._size > self._max_part_bytes
        self._done.append(
            Part(
                self._count,
                media_type.decode("latin-1"),
                # Its preamble zeroed here, in the buffer: acceptance's zeroing then copies nothing (it
                # made a third copy of the part: the buffer, its bytes, and those with a zero preamble).
                b"" if too_large else bytes(zero_preamble(self._data)),
                self._size,
                too_large,
            )
        )
        self._count += 1
        self._reset_part()

    def _on_end(self) -> None:
        self._ended = True

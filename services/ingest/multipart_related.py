"""Reading a STOW-RS request body: multipart/related; type="application/dicom" (PS3.18 8.6.1.2,
RFC 2387), parsed by python-multipart's streaming parser as the bytes arrive.

Parts are handed out as soon as each one is complete, so the service holds one instance at a time
however many a request carries. A part over the size limit is counted but not kept. A part larger than
`spill_over` goes to a file (`spill`, in the blob folder, which acceptance then moves into the store) from
then on: held in memory, a part cost twice its size, so two uploads of 512 MiB took ingest past its 2 GiB.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.common.dicom.part10 import zero_preamble
from services.common.messages import PhiSafeError

log = logging.getLogger(__name__)

DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"


class UnsupportedMediaType(PhiSafeError):
    """The request is not multipart/related of application/dicom parts (HTTP 415)."""


class MalformedMultipart(PhiSafeError):
    """The body does not parse as the multipart its Content-Type announced (HTTP 400)."""


# Parts up to this size stay in memory (a CT image is ~0.5 MB); a larger one is written to a file.
SPILL_OVER_BYTES = 8 * 1024 * 1024


class SpillFile(Protocol):
    """A part's file being written (services/ingest/received_files.py's ReceivedFile)."""

    name: str
    write_error: str  # a failed write's error type (a full disk): what followed was dropped

    def write(self, data: bytes | bytearray, /) -> int: ...

    def close(self) -> None: ...

    def remove(self) -> bool: ...


@dataclass(frozen=True)
class Part:
    """One body part: in `data`, or in the file at `path` (whoever takes the part removes it, `discard`).
    `data` is empty when the part was over the limit (`too_large`) or is in a file."""

    index: int
    content_type: str  # media type, lower case, without parameters; "" when the part had none
    data: bytes
    size: int
    too_large: bool = False
    path: Path | None = None
    unwritten: bool = False  # its file could not be written whole (a full disk): try again later


def discard(parts: Iterable[Part]) -> None:
    """Remove the files of parts that will not be accepted (accepted ones were moved into the store)."""
    for part in parts:
        if part.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part.path)


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

    def __init__(
        self,
        boundary: bytes,
        max_part_bytes: int,
        spill: Callable[[], SpillFile] | None = None,
        spill_over: int = SPILL_OVER_BYTES,
    ) -> None:
        self._max_part_bytes = max_part_bytes
        self._spill, self._spill_over = spill, spill_over
        self._file: SpillFile | None = None
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

    def discard(self) -> None:
        """Remove the files of the parts not taken and of the part being read (the body failed or ended)."""
        discard(self._take())
        self._drop_file()

    def _drop_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.remove()

    def _reset_part(self) -> None:
        self._drop_file()  # a part begun and never ended (a malformed body): its file too
        self._unwritten = False  # no file could be made for it: dropped, answered "try again later"
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
        if self._size > self._max_part_bytes or self._unwritten:
            self._data = bytearray()  # counted, not kept
            self._drop_file()
            return
        if self._file is None and self._spill is not None and self._size > self._spill_over:
            self._file = self._new_file(self._spill)
            if self._file is None:
                self._unwritten, self._data = True, bytearray()
                return
        if self._file is not None:
            self._file.write(data[start:end])
        else:
            self._data += data[start:end]

    def _new_file(self, spill: Callable[[], SpillFile]) -> SpillFile | None:
        """A new file holding the part read so far; None when none can be made (no space, no descriptor):
        the part is then dropped, not held in memory whatever its size."""
        try:
            file = spill()
        except OSError as exc:
            log.warning("stow-rs part not kept: no file for it", extra={"error": type(exc).__name__})
            return None
        file.write(self._data)
        self._data = bytearray()
        return file

    def _on_part_end(self) -> None:
        media_type, _ = parse_options_header(self._headers.get("content-type", ""))
        too_large = self._size > self._max_part_bytes
        kind = media_type.decode("latin-1")
        if self._unwritten and not too_large:
            part = Part(self._count, kind, b"", self._size, unwritten=True)
        elif self._file is not None:
            file, self._file = self._file, None
            file.close()  # its preamble is zeroed, and it is moved into the store, by acceptance
            part = Part(self._count, kind, b"", self._size, path=Path(file.name), unwritten=bool(file.write_error))
        else:
            # Its preamble zeroed here, in the buffer: acceptance's zeroing then copies nothing (it made a
            # third copy of the part: the buffer, its bytes, and those with a zero preamble).
            data = b"" if too_large else bytes(zero_preamble(self._data))
            part = Part(self._count, kind, data, self._size, too_large)
        self._done.append(part)
        self._count += 1
        self._reset_part()

    def _on_end(self) -> None:
        self._ended = True

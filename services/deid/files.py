"""The deid stage's and `imx deid`'s file I/O around the engine: inputs read so that an instance of any
size (ingest accepts up to 1 GiB) is never held whole in memory, outputs written from the result's
chunks (new header + the input's Pixel Data as a view) without joining them first.

Large inputs are memory-mapped: the engine's fast path reads only the header's pages, and the pixel
data go from the map to the output file a window at a time, their pages dropped from the process
after each window (blob_store.windows), so resident memory stays a few megabytes above the header.
Small ones are read as bytes: for half a megabyte a map costs more than it saves.

A deflated input, however small, may inflate to a gigabyte: `deidentified` inflates it into a
temporary file in `scratch` (the blob store's folder) and maps that (deflated.py).
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from services.common.blob_store import BlobStore, process_umask, replace_atomically, windows, write_all
from services.common.dicom.header import DEFAULT_LIMITS, InvalidInstance, check_whole_read
from services.deid.deflated import DEFLATED, deflate_into, deflated_body, inflate_into
from services.deid.engine import DeidResult, NotDeidentifiable, Profile, deidentify
from services.deid.engine.container import Source
from services.proto_gen.imx.v1 import events_pb2

MAPPED_FROM_BYTES = 32 * 1024 * 1024
MAX_INFLATED_BYTES = DEFAULT_LIMITS.max_inflated_bytes


@contextmanager
def blob_source(blobs: BlobStore, blob: events_pb2.BlobRef) -> Iterator[Source]:
    """The stored object, checked against the size its event carries (its SHA-256 was computed when
    ingest wrote it; blob_store `_check_size`): bytes when small, else a read-only map that stays valid
    for the `with` block (the result's chunks may point into it)."""
    if blob.size < MAPPED_FROM_BYTES:
        yield blobs.get(blob.sha256, blob.size)
        return
    with blobs.open(blob.sha256, blob.size) as file, _mapped(file.fileno()) as view:
        yield view


@contextmanager
def file_source(path: Path) -> Iterator[Source]:
    """`blob_source` for a file given by path (`imx deid`)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size < MAPPED_FROM_BYTES:
            yield file.read()
            return
        with _mapped(file.fileno()) as view:
            yield view


@contextmanager
def _mapped(fd: int) -> Iterator[mmap.mmap]:
    view = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    try:
        yield view
    finally:
        # A chunk still referenced (say, by an exception's frames) keeps the map until collected.
        with suppress(BufferError):
            view.close()


@contextmanager
def deidentified(
    data: Source,
    profile: Profile,
    key: bytes,
    scratch: Path | None = None,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
) -> Iterator[DeidResult]:
    """`deidentify`, a deflated input first inflated into a temporary file in `scratch` (None: the
    system's temporary folder) and read through a map; the result's chunks are valid inside the
    `with` block, and the temporary files are gone after it, however it ends."""
    body = deflated_body(data)
    if body is None:
        yield deidentify(data, profile, key, _within_whole_read)
        return
    with _scratch_file(scratch) as plain_file:
        inflate_into(plain_file, data, body, max_inflated_bytes)
        with _mapped(plain_file.fileno()) as plain, _scratch_file(scratch) as deflated_file:
            plain_result = deidentify(plain, profile, key, _within_whole_read)
            header = deflate_into(deflated_file, plain_result)
            # Released as it came, deflated (deflated.py): the bytes the pydicom path wrote before.
            # Its pixel data are the inflated scratch file's, not the stored input's: nothing to splice.
            result = replace(plain_result, transfer_syntax_uid=DEFLATED, chunks=(), source_offset=None)
            del plain_result  # its pixel data are a view into `plain`, which can now be unmapped
            with _mapped(deflated_file.fileno()) as deflated_view:
                yield replace(result, chunks=(header, memoryview(deflated_view)))


# Elements and items the pydicom path may read whole: ~340 bytes each, so ~700 MB at most. Ingest lets an
# explicit VR header of many millions through (its byte walk holds none); the raw engine reads those in
# place, and one it hands to the pydicom path is refused here rather than taking the process past its memory.
WHOLE_READ_MAX_ELEMENTS = 2_000_000


def _within_whole_read(data: Source) -> None:
    try:
        check_whole_read(data, WHOLE_READ_MAX_ELEMENTS)
    except InvalidInstance as refused:
        # Only what reading it whole would cost: anything else ingest's checks would say (a malformed
        # file meta UID, say) is the pydicom path's to decide, as it was before this check.
        if refused.reason in ("too-many-elements", "too-deep"):
            raise NotDeidentifiable(f"{refused.reason} to read whole ({refused.detail})") from None


@contextmanager
def _scratch_file(scratch: Path | None) -> Iterator[BinaryIO]:
    """A file with no name (O_TMPFILE where the file system has it): nothing is left behind, even by
    a process that is killed."""
    with tempfile.TemporaryFile(prefix=".tmp-deid-", dir=scratch) as file:
        yield file


def deidentify_file(source: Path, target: Path, profile: Profile, key: bytes) -> DeidResult:
    """Read ``source``, de-identify it, write ``target`` (replaced if it exists). DeidError: nothing written."""
    with file_source(source) as data, deidentified(data, profile, key, target.parent) as result:
        write_chunks(target, result.chunks)
    return result


def write_chunks(target: Path, chunks: tuple[bytes | memoryview, ...]) -> None:
    """`chunks` as `target`, whole or not at all: written beside it under a hidden `.part` name and
    renamed over it once complete, so an interrupted write (Ctrl-C, a full disk) leaves no header-only
    file that looks like a finished one."""

    def fill(out: BinaryIO) -> None:
        os.fchmod(out.fileno(), 0o644 & ~process_umask())  # as a new file gets, not mkstemp's private 0600
        for piece in windows(chunks):  # window by window: a mapped input's pages are let go as written
            write_all(out.fileno(), piece)

    def make_temp() -> tuple[int, str]:
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)

    replace_atomically(target, fill, make_temp, sync=False)

"""The deid stage's and `imx deid`'s file I/O around the engine: inputs read so that an instance of any
size (ingest accepts up to 1 GiB) is never held whole in memory, outputs written from the result's
chunks (new header + the input's Pixel Data as a view) without joining them first.

Large inputs are memory-mapped: the engine's fast path reads only the header's pages, and the pixel
data go from the map to the output file a window at a time, their pages dropped from the process
after each window (blob_store.windows), so resident memory stays a few megabytes above the header.
Small ones are read as bytes: for half a megabyte a map costs more than it saves.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from services.common.blob_store import BlobStore, windows, write_all
from services.deid.engine import DeidResult, Profile, deidentify
from services.deid.engine.container import Source
from services.proto_gen.imx.v1 import events_pb2

MAPPED_FROM_BYTES = 32 * 1024 * 1024


@contextmanager
def blob_source(blobs: BlobStore, blob: events_pb2.BlobRef) -> Iterator[Source]:
    """The stored object, checked against its SHA-256: bytes when small, else a read-only map that
    stays valid for the `with` block (the result's chunks may point into it)."""
    if blob.size < MAPPED_FROM_BYTES:
        yield blobs.get(blob.sha256)
        return
    with blobs.open(blob.sha256) as file, _mapped(file.fileno()) as view:
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


def deidentify_file(source: Path, target: Path, profile: Profile, key: bytes) -> DeidResult:
    """Read ``source``, de-identify it, write ``target`` (replaced if it exists). DeidError: nothing written."""
    with file_source(source) as data:
        result = deidentify(data, profile, key)
        write_chunks(target, result.chunks)
    return result


def write_chunks(target: Path, chunks: tuple[bytes | memoryview, ...]) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for piece in windows(chunks):  # window by window: a mapped input's pages are let go as written
            write_all(fd, piece)
    finally:
        os.close(fd)

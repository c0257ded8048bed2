"""The blob store as the deid stage writes it: each de-identified instance is hashed and written to a
temp file as it is prepared, and the whole batch is made durable at once by `settle`, which the bus
runs after the batch (the handler's `flush`) and before it publishes the batch's outputs, so no
InstancePrepared names an object that is not yet on disk, fsynced, under its final name.

Written one at a time (`LocalBlobStore.put_chunks`), each object cost two or three journal commits:
the fsync of its file, of its folder after the rename, and of the folder above when its fan-out folder
was new (on a fresh store, nearly every object). A batch now fsyncs each file, creates the missing
folders and renames every object into place, then fsyncs each changed folder once: after the first of
those fsyncs has committed the batch's entries the others find little left to commit. Nothing is
promised earlier than before: an object is visible under its name only after its bytes were fsynced,
and its event is published only after every folder on its path was.

Each temp file stays open until `settle` fsyncs it (one open per object, not two), and an object's
folder is made by one mkdir that finds it there or creates it (no look-up of each folder first).

`put_spliced` stores an object whose tail is the end of a stored object (the ingest blob it was made
from) as a splice record (services/common/blob_splices.py): only the record, a few kilobytes, goes to a
temp file, and it is settled with the batch exactly as a whole object is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from services.common.blob_splices import SPLICE_SUFFIX
from services.common.blob_store import (
    LocalBlobStore,
    already_stored,
    drop_cached_path,
    fsync_directory,
    write_all,
    write_hashed,
)


class BatchedBlobWrites:
    """`BlobStore` over a LocalBlobStore whose `put_chunks` leaves the object pending until `settle`;
    the other calls go straight to the store."""

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._pending: list[tuple[int, str, str]] = []  # (open temp file, its name, final path), in write order
        self._finished: list[str] = []  # inputs read for the last time, their pages dropped by `settle`

    @property
    def pending(self) -> int:
        return len(self._pending)

    def put(self, data: bytes) -> str:
        return self._store.put(data)

    def put_file(self, source: Path, sha256: str | None = None) -> str:
        return self._store.put_file(source, sha256)

    def get(self, sha256: str, size: int | None = None) -> bytes:
        return self._store.get(sha256, size)

    def open(self, sha256: str, size: int | None = None) -> BinaryIO:
        return self._store.open(sha256, size)

    def exists(self, sha256: str) -> bool:
        return self._store.exists(sha256)

    def finished_with(self, sha256: str) -> None:
        """The stored input `sha256` is not read again in the normal path (its output was written whole,
        nothing refers to it): its cached pages are dropped once the batch is durable (blob_store
        `drop_cached`), so a retry before then still reads it from the cache."""
        self._finished.append(self._store.object_path(sha256))

    def put_chunks(self, chunks: Iterable[bytes | memoryview]) -> tuple[str, int]:
        """Hash and write `chunks` to a temp file beside the objects; (SHA-256, size). The object is
        durable and under its name only after `settle`."""
        fd, tmp_name = tempfile.mkstemp(dir=self._store.root, prefix=".tmp-")
        try:
            digest, size = write_hashed(fd, chunks)
            final = self._store.object_path(digest)
            if already_stored(final):
                _discard(fd, tmp_name)
                return digest, size
        except BaseException:
            _discard(fd, tmp_name)
            raise
        self._pending.append((fd, tmp_name, final))
        return digest, size

    def put_spliced(self, head: bytes, tail: memoryview, source: str, offset: int) -> tuple[str, int]:
        """`LocalBlobStore.put_spliced`, its record pending until `settle` (written whole, also pending,
        when `source` is not a stored object that `tail` ends)."""
        planned = self._store.spliced(head, tail, source, offset)
        if planned is None:
            written = self.put_chunks((head, tail))
            self.finished_with(source)
            return written
        digest, size, splice = planned
        if splice is None:
            return digest, size
        fd, tmp_name = tempfile.mkstemp(dir=self._store.root, prefix=".tmp-")
        try:
            write_all(fd, memoryview(splice.encode()))
        except BaseException:
            _discard(fd, tmp_name)
            raise
        self._pending.append((fd, tmp_name, self._store.object_path(digest) + SPLICE_SUFFIX))
        return digest, size

    def settle(self) -> None:
        """Make every pending object durable under its name: fsync each file, rename it into place,
        then fsync each folder once. On any failure the temp files not yet renamed are removed and the
        error is raised (the bus reads the batch again, which writes them again)."""
        pending, self._pending = self._pending, []
        finished, self._finished = self._finished, []
        try:
            for fd, _, _ in pending:
                os.fsync(fd)
            folders: dict[str, None] = {}  # each folder whose entries changed, fsynced once
            for _, tmp_name, final in pending:
                folder = os.path.dirname(final)
                for created in made_folders(folder):
                    folders[os.path.dirname(created)] = None
                os.replace(tmp_name, final)
                folders[folder] = None
            for folder in folders:
                fsync_directory(folder)
            for path in finished:
                drop_cached_path(path)
        except BaseException:
            for _, tmp_name, _ in pending:
                Path(tmp_name).unlink(missing_ok=True)
            raise
        finally:
            for fd, _, _ in pending:
                os.close(fd)


def _discard(fd: int, tmp_name: str) -> None:
    os.close(fd)
    Path(tmp_name).unlink(missing_ok=True)


def made_folders(folder: str) -> list[str]:
    """Create `folder` and any folder above it that is missing; those this call created, outermost
    first. One mkdir when the folder exists already or only it is missing (a stat, then a mkdir, cost
    one call more when it was missing, as on a fresh store nearly always)."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        return []
    except FileNotFoundError:
        above = made_folders(os.path.dirname(folder))
        with suppress(FileExistsError):
            os.mkdir(folder)
        return [*above, folder]
    return [folder]

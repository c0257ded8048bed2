"""Receipts on the blob volume: which events ingest has published, as hard links.

The contract of `ReceiptStore` (services/ingest/receipts.py), kept where the blobs are (`<blob
root>/.receipts`, shared by every ingest replica as the blobs are) instead of in MongoDB, where a
receipt write was ingest's most frequent database call: one FerretDB insert per commit group, ~1,090
of the ~1,960 PostgreSQL transactions of a `make bench` run, each costing ~1.3 ms of FerretDB and
PostgreSQL CPU (services/ingest/README.md).

A published event is one name, `<event id[:2]>/<event id>`, a hard link to this process's record
(`procs/<process>-<k>`, a symbolic link made once; a new one every `LINKS_PER_RECORD` links, below
every file system's limit on links). A claim only looks the name up: found, the instance is a
duplicate; not found, it is published, and its link (`Receipt.mark`) is written with the next group's
claim, or at shutdown. A hard link is one metadata operation and allocates no inode, which matters on
this project's own machines: after `make clean`, ext4 without a journal walks the recently deleted
inodes on every create (README, "Figures"), and a symbolic link per group cost ingest more kernel CPU
than it saved FerretDB (measured; services/ingest/README.md).

Unlike the MongoDB store, nothing is written before the event is published: an instance whose event
was acknowledged but whose link was never written (the process killed in between) is published again
when it is resent, under the same event id, with the resend's timestamps rather than the first's;
downstream stages keep one by its id, as they do for any redelivery. The facts `ReceiptFacts` carries
(organisation, channel, SOP Instance UID, hash, size) are not stored: the event id is their hash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from services.common.blob_store import fsync_directory, missing_parents
from services.ingest.receipts import (
    MARK_PREFIX,
    Receipt,
    ReceiptFacts,
    ReceiptStatus,
    ReceiptStoreUnavailable,
    mark_id,
)

FOLDER = ".receipts"  # under the blob root: not two characters long, so blob scans pass it by
LINKS_PER_RECORD = 60_000  # ext4 allows 65,000 links to one inode
_EVENT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{1,127}")  # a folder name: no "/", no leading "."


class FileReceiptStore:
    def __init__(self, root: Path) -> None:
        self._root = str(root)
        self._process = secrets.token_hex(8)  # unique across processes and restarts, without asking anyone
        self._records = 0
        self._record: str | None = None
        self._links = 0
        # Folders written by the last call, fsynced by the next (see `claim_many`).
        self._unsynced: set[str] = set()
        self._lock = threading.Lock()

    def claim_many(
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, marks: Sequence[str] = ()
    ) -> list[Receipt]:
        """Write `marks` (events the broker acknowledged since the last call), then look each claim up.
        The links are made durable by the next call (or `write_marks` at shutdown), not this one: by
        then the blobs' own fsyncs have usually committed them (on ext4, a journal commit takes every
        metadata change before it), so that fsync is nearly free. Lost only if the machine (not the
        process) dies in between; then a resend of those instances is published once more."""
        with self._lock:
            try:
                _fsync_all(self._unsynced)
                self._unsynced = self._link_marks(marks)
                return [self._look_up(event_id, now_ms) for event_id, _ in claims]
            except OSError as exc:
                raise ReceiptStoreUnavailable(f"receipt store unavailable: {_reason(exc)}") from exc

    def write_marks(self, marks: Sequence[str], now_ms: int) -> None:
        """Write the marks and make them, and every earlier link, durable now."""
        with self._lock:
            try:
                _fsync_all(self._link_marks(marks) | self._unsynced)
                self._unsynced = set()
            except OSError as exc:
                raise ReceiptStoreUnavailable(f"receipt store unavailable: {_reason(exc)}") from exc

    def _look_up(self, event_id: str, now_ms: int) -> Receipt:
        if os.path.lexists(self._path(event_id)):
            return Receipt(event_id, ReceiptStatus.PUBLISHED, now_ms)
        return Receipt(event_id, ReceiptStatus.RECEIVED, now_ms, new=True, mark=mark_id(event_id))

    def _link_marks(self, marks: Iterable[str]) -> set[str]:
        """Link each mark's name to the record (a name that exists is left as it is); the folders
        written into, to be made durable."""
        touched: set[str] = set()
        for mark in marks:
            if not mark.startswith(MARK_PREFIX):
                raise ValueError("not a mark this store wrote")
            path = self._path(mark.removeprefix(MARK_PREFIX))
            if self._link(path, touched):
                touched.add(os.path.dirname(path))
        return touched

    def _link(self, path: str, touched: set[str]) -> bool:
        """Link `path` to the record; False when the name exists already."""
        folder = os.path.dirname(path)
        for _ in range(3):
            if self._record is None or self._links >= LINKS_PER_RECORD:
                self._record, self._links = self._new_record(touched), 0
            try:
                os.link(self._record, path, follow_symlinks=False)
            except FileExistsError:
                return False
            except FileNotFoundError:
                if os.path.isdir(folder):
                    self._record = None  # the record is gone (a damaged volume): make another
                else:
                    _make_folders(Path(path), touched)  # the link's folder, on first use
                continue
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
                self._record = None  # a file system with a lower limit than LINKS_PER_RECORD
                continue
            self._links += 1
            return True
        raise ReceiptStoreUnavailable("receipt store unavailable: links cannot be made")

    def _new_record(self, touched: set[str]) -> str:
        self._records += 1
        record = f"{self._root}/procs/{self._process}-{self._records}"
        _make_folders(Path(record), touched)
        with contextlib.suppress(FileExistsError):  # a record left by a failed call of this process
            os.symlink("imx ingest: events published", record)
        touched.add(os.path.dirname(record))
        return record

    def _path(self, event_id: str) -> str:
        if not _EVENT_ID.fullmatch(event_id):
            raise ValueError("an event id is letters, digits, - and _")
        return f"{self._root}/{event_id[:2]}/{event_id}"


def _make_folders(path: Path, touched: set[str]) -> None:
    """Make the folders above `path` that are missing; each new one's parent is to be fsynced too (with
    the links, not at once as `blob_store.make_durable_parents` does)."""
    for folder in missing_parents(path):
        with contextlib.suppress(FileExistsError):  # made meanwhile, or a file there: the link then says
            os.mkdir(folder)
        touched.add(str(folder.parent))


def _fsync_all(folders: Iterable[str]) -> None:
    for folder in folders:
        fsync_directory(folder)


def _reason(exc: OSError) -> str:
    """The error's kind only: paths hold event ids, which are not PHI, but say nothing useful either."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)

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

Receipts are kept for a retention, not for ever (`prune_receipts`, run by ingest every hour): a record
takes links for at most `RECORD_SPAN_S`, so once its last link is older than the retention (its
`ctime`, which every new link moves) all of its names are, and they go together, found by the record's
inode number without a `stat` per name. A resend after that is published once more, as after a lost
link.

Unlike the MongoDB store, nothing is written before the event is published: an instance whose event
was acknowledged but whose link was never written (the process killed in between) is published again
when it is resent, under the same event id, with the resend's timestamps rather than the first's;
downstream stages keep one by its id, as they do for any redelivery.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.blob_store import fsync_directory, missing_parents
from services.ingest.receipts import MARK_PREFIX, Receipt, ReceiptStoreUnavailable, mark_id

FOLDER = ".receipts"  # under the blob root: not two characters long, so blob scans pass it by
LINKS_PER_RECORD = 60_000  # ext4 allows 65,000 links to one inode
# A record's links span at most this long, so pruning by record keeps no name much past the retention.
RECORD_SPAN_S = 3600.0
PROCS = "procs"
_EVENT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{1,127}")  # a folder name: no "/", no leading "."

log = logging.getLogger(__name__)


def receipts_folder(blob_dir: Path) -> Path:
    """Where the receipts of the ingest replicas sharing the blob volume `blob_dir` live."""
    return blob_dir / FOLDER


class FileReceiptStore:
    def __init__(self, root: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = str(root)
        self._clock = clock
        self._process = secrets.token_hex(8)  # unique across processes and restarts, without asking anyone
        self._records = 0
        self._record: str | None = None
        self._links = 0
        self._record_started = 0.0
        # Folders written since the last `write_marks`, fsynced by the next (see `claim_many`).
        self._unsynced: set[str] = set()
        self._lock = threading.Lock()

    def claim_many(self, event_ids: Sequence[str], marks: Sequence[str] = ()) -> list[Receipt]:
        """Write `marks` (events the broker acknowledged since the last call), then look each event id
        up. The links are not fsynced here: the file system's own write-back makes them durable (ext4's
        journal commit, forced anyway by the next blob fsync; without a journal, within its ~30 s
        dirty expiry), and `write_marks` fsyncs them all at shutdown. A link only spares a resend from
        being published again, so one lost with the machine (not the process: the kernel has it) costs
        one more copy of an event under the same id, which every stage downstream drops by its id. The
        leader's fsync of the last group's folders cost every sender of its group ~1.5 ms on average, a
        device flush more per group (instrumented `make bench` runs, services/ingest/README.md)."""
        with self._lock:
            try:
                self._unsynced |= self._link_marks(marks)
                return [self._look_up(event_id) for event_id in event_ids]
            except OSError as exc:
                raise ReceiptStoreUnavailable(f"receipt store unavailable: {_reason(exc)}") from exc

    def write_marks(self, marks: Sequence[str]) -> None:
        """Write the marks and make them, and every link written since the last call, durable now."""
        with self._lock:
            try:
                _fsync_all(self._link_marks(marks) | self._unsynced)
                self._unsynced = set()
            except OSError as exc:
                raise ReceiptStoreUnavailable(f"receipt store unavailable: {_reason(exc)}") from exc

    def _look_up(self, event_id: str) -> Receipt:
        if os.path.lexists(self._path(event_id)):
            return Receipt(event_id, True)
        return Receipt(event_id, False, mark_id(event_id))

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
            if (
                self._record is None
                or self._links >= LINKS_PER_RECORD
                or self._clock() - self._record_started > RECORD_SPAN_S
            ):
                self._record, self._links, self._record_started = self._new_record(touched), 0, self._clock()
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
        record = f"{self._root}/{PROCS}/{self._process}-{self._records}"
        _make_folders(Path(record), touched)
        with contextlib.suppress(FileExistsError):  # a record left by a failed call of this process
            os.symlink("imx ingest: events published", record)
        touched.add(os.path.dirname(record))
        return record

    def _path(self, event_id: str) -> str:
        if not _EVENT_ID.fullmatch(event_id):
            raise ValueError("an event id is letters, digits, - and _")
        return f"{self._root}/{event_id[:2]}/{event_id}"


@dataclass(frozen=True)
class Pruned:
    records: int  # records whose every name was older than the retention
    names: int  # receipts removed with them


def prune_receipts(root: Path, older_than_s: float, clock: Callable[[], float] = time.time) -> Pruned:
    """Remove the receipts written more than `older_than_s` ago, a whole record's at a time; safe beside
    the stores writing (a store whose record goes makes another) and beside another pruning replica.
    One walk of the names, reading only their inode numbers from the folder listing."""
    procs = os.path.join(root, PROCS)
    try:
        listing = list(os.scandir(procs))
    except FileNotFoundError:
        return Pruned(0, 0)
    now = clock()
    stale: dict[int, str] = {}
    for entry in listing:
        with contextlib.suppress(FileNotFoundError):
            stat = entry.stat(follow_symlinks=False)
            if now - stat.st_ctime > older_than_s:
                stale[stat.st_ino] = entry.path
    if not stale:
        return Pruned(0, 0)
    names = 0
    for folder in os.scandir(root):
        if folder.name == PROCS or not folder.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(folder.path):
            if entry.inode() in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    names += 1
    for record in stale.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record)
    return Pruned(len(stale), names)


def prune_receipts_every(root: Path, older_than_s: float, interval_s: float, stop: threading.Event) -> None:
    """`prune_receipts` on a timer until `stop` (each ingest replica runs one; two at once are harmless)."""
    while not stop.wait(interval_s):
        try:
            pruned = prune_receipts(root, older_than_s)
        except OSError as exc:  # the volume is away: next round
            log.warning("receipt pruning failed", extra={"error": _reason(exc)})
            continue
        if pruned.names:
            log.info("receipts past their retention removed", extra={"count": pruned.names})


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

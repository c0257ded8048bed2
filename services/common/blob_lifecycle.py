"""Blob lifecycle: objects are deleted once no partner is owed them and the retention has passed.

A partner is owed an object (the delivered copy, and the source it was made from) from the moment it
is delivered until its gateway reports it stored. The retention (default: the partner topics' own,
seven days) also covers objects still in the pipeline, which no delivery names yet, by their age alone:
the blob store refreshes an object's time whenever the same content is written again, so age means "not
written or re-received for that long", and the stages' backlogs together must stay under the retention
(`imx blobs gc` takes at least a day). The decision is a pure function of what is on disk and what is
owed; an object chosen is renamed out of the store (`.gc-...`) before its time is looked at a last time,
so a writer that refreshes it meanwhile either is seen (the object is put back) or finds it gone and
writes it afresh.

A spliced object (services/common/blob_splices.py) is its record, `<sha256>.splice`, which names its
source: a source is never collected while a record naming it is kept (writing a record refreshes its
source's time too, so a collection that chose the source before the record existed re-checks and
keeps it). Records are decided first, so a source whose last record goes is collected in the same run.
Usage counts files on disk: a spliced object is one object of its record's size (its head and the
reference), the bytes it shares with its source counted once, in the source.

The same walk removes the `.tmp-` files a writer that died left behind (ingest's received data sets,
the stores' writes before their rename), once none has been written for `STALE_TEMPORARY_S`: a live
writer's file changes as its data arrives, and the stages' own writes last seconds, so on a volume
shared by several replicas only the dead ones' files are that old.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.blob_splices import SPLICE_SUFFIX, SpliceMalformed, decode_splice

DEFAULT_RETENTION_S = 7 * 24 * 3600
# An instance still in the pipeline (not yet delivered, so owed to no one) is kept by its age alone: a
# retention shorter than a day deleted instances the stages had not read yet, behind a backlog or an outage.
MIN_RETENTION_S = 24 * 3600
TEMPORARY_PREFIX = ".tmp-"
# An object taken out of the store to be deleted (`_claim`): `.gc-<name>-<token>`. A collection that died
# holding one settles it in the next (`_settle_claim`).
CLAIM_PREFIX = ".gc-"
# Ingest abandons a transfer that has sent nothing for its network timeout (a minute), and removes its
# file; an hour leaves a wide margin.
STALE_TEMPORARY_S = 3600


@dataclass(frozen=True)
class BlobEntry:
    sha256: str
    size: int  # on disk: a spliced object's record
    modified_s: float
    source: str = ""  # a spliced object's: the object whose bytes it refers to
    spliced_size: int = 0  # a spliced object's: its whole bytes, its head and its source's range
    path: str = ""  # the file: the object, or a spliced object's record

    @property
    def logical_size(self) -> int:
        """The object's bytes, what reading (or verifying) it reads: a spliced object's head and its
        source's range, not its record."""
        return self.spliced_size if self.source else self.size

    @property
    def name(self) -> str:
        return self.sha256 + SPLICE_SUFFIX if self.source else self.sha256


@dataclass
class Usage:
    objects: int = 0
    bytes: int = 0
    expired_objects: int = 0  # older than the retention
    expired_bytes: int = 0
    owed_objects: int = 0  # a partner has not stored them yet
    owed_bytes: int = 0


@dataclass
class Collected:
    deleted: int = 0
    freed_bytes: int = 0
    kept_owed: int = 0
    kept_sources: int = 0  # past the retention, but a spliced object that is kept refers to them
    temporaries: int = 0  # left by writers that died (not objects: not in `deleted`)
    temporary_bytes: int = 0


def scan(root: Path, on_temporary: Callable[[os.DirEntry[str]], None] | None = None) -> Iterator[BlobEntry]:
    """Every object in the store's fan-out folders, of either layout (blob_layout.py; temporaries are
    not objects: `on_temporary`, when given, is told of each, in the root and in the fan-out folders)."""
    if not root.exists():
        return
    for first in os.scandir(root):
        if on_temporary and first.name.startswith(TEMPORARY_PREFIX):
            on_temporary(first)
        if not first.is_dir() or len(first.name) != 2:
            continue
        for entry in os.scandir(first.path):
            if len(entry.name) == 2 and entry.is_dir():  # a second level: a store of the old layout
                for inner in os.scandir(entry.path):
                    yield from _object_entry(inner, on_temporary)
            else:
                yield from _object_entry(entry, on_temporary)


def _object_entry(
    entry: os.DirEntry[str], on_temporary: Callable[[os.DirEntry[str]], None] | None
) -> Iterator[BlobEntry]:
    if entry.name.startswith("."):
        if on_temporary and entry.name.startswith((TEMPORARY_PREFIX, CLAIM_PREFIX)):
            on_temporary(entry)
        return
    if len(entry.name) == 64:
        try:
            stat = entry.stat()
        except FileNotFoundError:  # collected meanwhile (another replica's collection, `imx blobs gc`)
            return
        yield BlobEntry(entry.name, stat.st_size, stat.st_mtime, path=entry.path)
    elif len(entry.name) == 64 + len(SPLICE_SUFFIX) and entry.name.endswith(SPLICE_SUFFIX):
        spliced = _spliced_entry(entry)
        if spliced is not None:
            yield spliced


_RECORD_START = 256  # the record's first lines: magic, then source, offset and size


def _spliced_entry(entry: os.DirEntry[str]) -> BlobEntry | None:
    """The record's entry with its source; None when it is gone meanwhile. An unreadable record names
    no real source ("?" * 64): it keeps nothing, and goes as any object does (`imx blobs verify`
    reports it as corrupt meanwhile)."""
    try:
        stat = entry.stat()
        with open(entry.path, "rb") as file:
            start = file.read(_RECORD_START)
    except FileNotFoundError:
        return None
    try:
        splice = decode_splice(start)
    except SpliceMalformed:
        return BlobEntry(entry.name[:64], stat.st_size, stat.st_mtime, "?" * 64, stat.st_size, entry.path)
    # `start` holds the record's first lines and the beginning of its head: the head is the rest.
    head = stat.st_size - (len(start) - len(splice.head))
    size = head + splice.source_size - splice.offset
    return BlobEntry(entry.name[:64], stat.st_size, stat.st_mtime, splice.source, size, entry.path)


def deletable(entry: BlobEntry, owed: set[str], now_s: float, retention_s: float) -> bool:
    return entry.sha256 not in owed and now_s - entry.modified_s > retention_s


def usage(entries: Iterable[BlobEntry], owed: set[str], now_s: float, retention_s: float) -> Usage:
    result = Usage()
    for entry in entries:
        result.objects += 1
        result.bytes += entry.size
        if now_s - entry.modified_s > retention_s:
            result.expired_objects += 1
            result.expired_bytes += entry.size
        if entry.sha256 in owed:
            result.owed_objects += 1
            result.owed_bytes += entry.size
    return result


def collect(
    root: Path,
    owed: Callable[[], set[str]],
    retention_s: float = DEFAULT_RETENTION_S,
    dry_run: bool = False,
    on_entry: Callable[[BlobEntry], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Collected:
    """Delete what may go. `owed` is read after the scan has chosen its candidates, so a delivery
    recorded meanwhile still protects its objects. Spliced objects' records are decided first; the
    sources of those kept are kept. Stale temporaries go too."""
    now_s = clock()
    candidates: list[BlobEntry] = []
    # The sources of the spliced objects kept, as 8 bytes each: a store holds one record per de-identified
    # copy (millions in a week at a national rate), and their entries, held whole, took ~600 bytes each.
    referred = array("Q")
    temporaries: list[os.DirEntry[str]] = []
    for entry in scan(root, on_temporary=temporaries.append):
        if on_entry:
            on_entry(entry)
        if now_s - entry.modified_s > retention_s:
            candidates.append(entry)
        elif entry.source:
            referred.append(_short(entry.source))
    still_owed = owed()
    result = Collected()
    for entry in (e for e in candidates if e.source):
        if not _delete(entry, still_owed, now_s, retention_s, dry_run, clock, result):
            referred.append(_short(entry.source))
    plain = [e for e in candidates if not e.source]
    wanted = {_short(e.sha256) for e in plain}
    kept = {short for short in referred if short in wanted}  # one pass; a shared short form keeps, never deletes
    del referred
    for entry in plain:
        if _short(entry.sha256) in kept:
            result.kept_sources += 1
            continue
        _delete(entry, still_owed, now_s, retention_s, dry_run, clock, result)
    for temporary in temporaries:
        if temporary.name.startswith(CLAIM_PREFIX):
            _settle_claim(Path(temporary.path), retention_s, dry_run, clock)
        else:
            _delete_temporary(temporary, dry_run, clock, result)
    return result


def _short(sha256: str) -> int:
    """An object's name in 8 bytes, within one collection. Two names sharing one (about one chance in 10⁷ for
    a store of 10⁷ records and 10⁵ objects due) keep an object another run then deletes: never the reverse."""
    return hash(sha256) & 0xFFFF_FFFF_FFFF_FFFF


def _delete_temporary(entry: os.DirEntry[str], dry_run: bool, clock: Callable[[], float], result: Collected) -> None:
    try:
        stat = entry.stat(follow_symlinks=False)
        # Stated now, not when the walk passed it: a writer may have written since.
        if not entry.is_file(follow_symlinks=False) or clock() - stat.st_mtime <= STALE_TEMPORARY_S:
            return
        if not dry_run:
            os.unlink(entry.path)
    except FileNotFoundError:  # its writer finished (renamed or removed it) meanwhile
        return
    result.temporaries += 1
    result.temporary_bytes += stat.st_size


def _delete(
    entry: BlobEntry,
    owed: set[str],
    now_s: float,
    retention_s: float,
    dry_run: bool,
    clock: Callable[[], float],
    result: Collected,
) -> bool:
    if not deletable(entry, owed, now_s, retention_s):
        result.kept_owed += 1
        return False
    if not entry.path:
        raise ValueError("only entries from scan() are deleted: they say where their file is")
    path = Path(entry.path)
    try:
        # Re-checked just before deleting: the same content may have been written again.
        if clock() - path.stat().st_mtime <= retention_s:
            return False
        if not dry_run and not _claim(path, retention_s, clock):
            return False
    except FileNotFoundError:
        return False
    result.deleted += 1
    result.freed_bytes += entry.size
    return True


def _claim(path: Path, retention_s: float, clock: Callable[[], float]) -> bool:
    """Delete the object at `path` unless a writer refreshed it (the same content written again) since it
    was chosen. A check and then a delete left a gap in which a writer's refresh was lost: it heard
    "stored", and the object was deleted. So the object is first renamed out of the store: a writer
    refreshing it after that finds it gone and writes it afresh (every writer does); one that refreshed it
    before is seen in its time, and the object is put back. True when deleted."""
    claimed = path.with_name(f"{CLAIM_PREFIX}{path.name}-{secrets.token_hex(4)}")
    os.rename(path, claimed)  # FileNotFoundError: collected meanwhile
    if clock() - claimed.stat().st_mtime <= retention_s:
        _put_back(claimed, path)
        return False
    claimed.unlink()
    return True


def _put_back(claimed: Path, path: Path) -> None:
    with contextlib.suppress(FileExistsError):  # a writer wrote the same content afresh meanwhile
        os.link(claimed, path)
    claimed.unlink()


def _settle_claim(claimed: Path, retention_s: float, dry_run: bool, clock: Callable[[], float]) -> None:
    """What a collection that died between `_claim`'s rename and its decision left: put back if refreshed
    meanwhile, else deleted, as it would have been."""
    name = claimed.name[len(CLAIM_PREFIX) :].rpartition("-")[0]
    if dry_run or not name:
        return
    try:
        if clock() - claimed.stat().st_mtime <= retention_s:
            _put_back(claimed, claimed.with_name(name))
        else:
            claimed.unlink()
    except FileNotFoundError:  # settled by another replica's collection meanwhile
        return

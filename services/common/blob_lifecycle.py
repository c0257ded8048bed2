"""Blob lifecycle: objects are deleted once no partner is owed them and the retention has passed.

A partner is owed an object (the delivered copy, and the source it was made from) from the moment it
is delivered until its gateway reports it stored. The retention (default: the partner topics' own,
seven days) also covers objects still in the pipeline, which no delivery names yet: the blob store
refreshes an object's time whenever the same content is written again, so age means "not written or
re-received for that long". The decision is a pure function of what is on disk and what is owed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RETENTION_S = 7 * 24 * 3600


@dataclass(frozen=True)
class BlobEntry:
    sha256: str
    size: int
    modified_s: float


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


def scan(root: Path) -> Iterator[BlobEntry]:
    """Every object under the store's two-level fan-out (temporaries are not objects)."""
    if not root.exists():
        return
    for first in os.scandir(root):
        if not first.is_dir() or len(first.name) != 2:
            continue
        for second in os.scandir(first.path):
            if not second.is_dir():
                continue
            for entry in os.scandir(second.path):
                if entry.name.startswith(".") or len(entry.name) != 64:
                    continue
                stat = entry.stat()
                yield BlobEntry(entry.name, stat.st_size, stat.st_mtime)


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
    recorded meanwhile still protects its objects."""
    now_s = clock()
    candidates = []
    for entry in scan(root):
        if on_entry:
            on_entry(entry)
        if now_s - entry.modified_s > retention_s:
            candidates.append(entry)
    still_owed = owed()
    result = Collected()
    for entry in candidates:
        if not deletable(entry, still_owed, now_s, retention_s):
            result.kept_owed += 1
            continue
        path = root / entry.sha256[:2] / entry.sha256[2:4] / entry.sha256
        try:
            # Re-checked just before deleting: the same content may have been written again.
            if clock() - path.stat().st_mtime <= retention_s:
                continue
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        result.deleted += 1
        result.freed_bytes += entry.size
    return result

"""Where a local blob store keeps its objects: one level of 256 fan-out folders, or two for old stores.

A store made by this version keeps an object at `<root>/<sha256[:2]>/<sha256>`. Stores made before it
keep theirs at `<root>/<sha256[:2]>/<sha256[2:4]>/<sha256>` and go on doing so: which layout a store
uses is written once, in `<root>/.layout`, by the first process that opens it, and read by every
other (all replicas of every stage, and the CLI, agree without asking each other).

Why one level: a fresh store with 65,536 second-level folders made a folder, and made it durable in its
parent with an fsync, for nearly every object of its first hundred thousand; with 256 it made each of
them once, within its first few thousand objects (on the 2-core machine, `make clean && make up &&
python -m tools.bench --skip-orthanc`, two layouts alternated, three pairs, 2026-12-04: ingest 3.46 →
3.31 ms per instance, deid 2.00 → 1.89, means), and now makes them all when the store is opened
(`make_fan_out_folders`), under one fsync of the root, so no sender waits for one. Directories of ext4
and XFS are indexed, so tens of thousands of names in a folder (a store of ten million objects) cost a
lookup no more than a few.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.common.messages import PhiSafeError

LAYOUT_FILE = ".layout"
ONE_LEVEL, TWO_LEVELS = 1, 2
_MARKER = "fan-out {levels}\n"


class UnknownBlobLayout(PhiSafeError):
    """The store's layout file names a layout this version does not know (a newer imx made it)."""


def object_path(root: str, sha256: str, levels: int) -> str:
    """Where the object `sha256` lives in a store of `levels` fan-out levels (the id already checked)."""
    if levels == ONE_LEVEL:
        return f"{root}/{sha256[:2]}/{sha256}"
    return f"{root}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def parse_marker(text: str) -> int:
    for levels in (ONE_LEVEL, TWO_LEVELS):
        if text == _MARKER.format(levels=levels):
            return levels
    raise UnknownBlobLayout(f"unknown blob store layout {text.strip()[:40]!r} in its {LAYOUT_FILE} file")


def store_levels(root: Path) -> int:
    """The store's fan-out levels, from its layout file; a store without one gets one now: two levels
    when it already holds objects in two (made before the file existed), one otherwise."""
    marker = root / LAYOUT_FILE
    try:
        return parse_marker(marker.read_text())
    except FileNotFoundError:
        pass
    levels = TWO_LEVELS if has_two_level_folders(root) else ONE_LEVEL
    try:
        if _write_marker_once(root, marker, levels):
            return levels
    except PermissionError:  # a reader without write access (the CLI as another user): it only reads
        return levels
    return parse_marker(marker.read_text())  # another process wrote it first: its choice holds


FAN_OUT = tuple(f"{i:02x}" for i in range(256))


def make_fan_out_folders(root: Path) -> int:
    """Create the one-level store's 256 folders that are missing, made durable by one fsync of the
    root; returns how many were made. At the store's opening, so that its first few thousand objects
    do not each pay a mkdir and a folder fsync before their sender hears "stored" (with them made
    lazily, `make clean && make bench` made all 256 within its 2,000 objects, each on some sender's
    time). A reader without write access makes none: the writers make them."""
    made = 0
    for name in FAN_OUT:
        try:
            os.mkdir(root / name)
        except FileExistsError:
            continue
        except PermissionError:  # no write access: none made after this one, those made before still synced
            break
        made += 1
    if made:
        # Imported here: blob_store imports this module for its paths.
        from services.common.blob_store import fsync_directory

        fsync_directory(root)
    return made


def has_two_level_folders(root: Path) -> bool:
    """Does any fan-out folder hold a fan-out folder of its own (the old layout's second level)?"""
    with os.scandir(root) as firsts:
        for first in firsts:
            if len(first.name) != 2 or not first.is_dir(follow_symlinks=False):
                continue
            with os.scandir(first.path) as seconds:
                if any(len(e.name) == 2 and e.is_dir(follow_symlinks=False) for e in seconds):
                    return True
    return False


def _write_marker_once(root: Path, marker: Path, levels: int) -> bool:
    """Write the layout file whole or not at all (a temp file linked to its name, which fails when the
    name exists): a reader never sees it half written. False: another process's file was there first."""
    temporary = root / f".tmp-layout-{secrets.token_hex(6)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, _MARKER.format(levels=levels).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, marker)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    # Imported here: blob_store imports this module for its paths.
    from services.common.blob_store import fsync_directory

    fsync_directory(root)  # the name survives a power cut: the store never changes its mind
    return True

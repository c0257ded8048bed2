"""The folder target: `<root>/<study>/<series>/<sop>.dcm`, written atomically. The root must exist:
the folders below it are made as needed, the root never (a missing one is waited for).

Each file is written in `<root>/.imx-incoming/` under a name that says which host and process wrote
it (scratch_files.py), then renamed into place: a gateway killed part way leaves its partial file
there, never beside the partner's objects, and the next start on the host removes it.

UIDs come from an event, so they are checked before they become path components: a UID is digits
and dots only (PS3.5 9.1), at most 64 characters, so no event can name `..` or an absolute path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from services.common.blob_store import fsync_directory, make_durable_parents, process_umask, replace_atomically
from services.gateway.fetched import Fetched
from services.gateway.scratch_files import new_scratch_file, remove_abandoned
from services.gateway.targets import FolderTarget, StoreResult, TargetKind
from services.proto_gen.imx.v1 import events_pb2

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*\Z")
_CHUNK = 1024 * 1024
INCOMING = ".imx-incoming"  # under the root: files being written, hidden from importers
PARTIAL_SUFFIX = ".part"  # never ".dcm": an importer scanning the whole tree takes no partial file


class UnsafeUid(ValueError):
    """A UID that is not a valid DICOM UID, so it must not become a path component."""


def safe_uid(uid: str) -> str:
    if len(uid) > 64 or not _UID.match(uid):
        raise UnsafeUid("the delivery carries an invalid UID")
    return uid


def path_for(root: Path, instance: events_pb2.InstanceRef) -> Path:
    """Where an instance goes under `root`; UnsafeUid when a UID could escape it."""
    study, series, sop = (
        safe_uid(instance.study_instance_uid),
        safe_uid(instance.series_instance_uid),
        safe_uid(instance.sop_instance_uid),
    )
    return root / study / series / f"{sop}.dcm"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FolderStore:
    kind: TargetKind = "file"

    def __init__(self, target: FolderTarget) -> None:
        self._root = target.root
        self._incoming = target.root / INCOMING
        self._incoming_ready = False
        # Files get the mode a program's new file gets (0666 less the umask), as an importer running as
        # another user expects, not the private 0600 of the temp file they are written through.
        self._mode = 0o666 & ~process_umask()

    def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
        try:
            target = path_for(self._root, delivery.instance)
        except UnsafeUid:
            return StoreResult.failed("invalid-uid", retryable=False)
        if not self._root.is_dir():
            # Waited for, never made: a share not mounted (yet) would otherwise be written on the local disk
            # under its mount point, reported stored, and hidden once the share mounts over it.
            return self._root_down()
        try:
            if target.exists() and file_sha256(target) == delivery.blob.sha256:
                # Its name and its folders' made durable first: a run killed between its rename (or its
                # folders' making) and their fsyncs left it so, and a STORED receipt lets imx delete its copy.
                for folder in (target.parent, *target.parent.parents):
                    fsync_directory(folder)
                    if folder == self._root:
                        break
                return StoreResult.stored("already-present")
            if not self._incoming_ready:  # once the root is there: a killed run's partial files removed
                self._incoming.mkdir(exist_ok=True)
                remove_abandoned(self._incoming, PARTIAL_SUFFIX)
                self._incoming_ready = True
            make_durable_parents(target)  # a new study's and series' folders too, each fsynced in its parent
            _copy_atomically(source, self._incoming, target, self._mode)
        except OSError as error:
            # A full or read-only disk may be fixed by the partner: retry, and wait without spending
            # attempts when the folder itself is gone (an unmounted share). The incoming folder is made
            # again on the next try (removed meanwhile, every later instance failed for good).
            self._incoming_ready = False
            if not self._root.is_dir():
                return self._root_down()
            return StoreResult.failed(f"os-error-{error.errno}", retryable=True)
        return StoreResult.stored("written")

    def _root_down(self) -> StoreResult:
        return StoreResult.down("folder-is-a-file" if self._root.exists() else "folder-missing")

    def close(self) -> None:
        pass


def _copy_atomically(source: Fetched, incoming: Path, target: Path, mode: int) -> None:
    """A crash leaves the old file or the new one, never half of one, under `target`'s name; the
    folder is fsynced too."""
    replace_atomically(target, lambda out: _copy(source, out, mode), lambda: new_scratch_file(incoming, PARTIAL_SUFFIX))
    fsync_directory(target.parent)


def _copy(source: Fetched, out: BinaryIO, mode: int) -> None:
    if source.data is not None:
        out.write(source.data)
    else:
        with source.open() as handle:
            shutil.copyfileobj(handle, out, _CHUNK)
    out.flush()
    # Once whole: readable by others only then; a share that refuses modes keeps its own.
    with contextlib.suppress(PermissionError):
        os.fchmod(out.fileno(), mode)

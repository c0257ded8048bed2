"""One process at a time on a gateway's state folder.

The newest-send guard (records.py `judge`) is read before a store and written after it, so a dead-letter
replay run beside the gateway on the same folder could store an older send over one the gateway stored
meanwhile, and two gateways on one folder would each take the other's dead letters for their own. The
gateway and a replay therefore hold an exclusive `flock` on `<state folder>/lock` while they work. The
kernel releases it when the process ends, however it ends: a killed gateway leaves nothing to clean up.
The file names who took it last (process id and what it is), for the message the next one gets. Do
not delete it while a gateway runs: a new file is a new lock. On NFS, Linux takes `flock` as a POSIX
lock, which two workers of one process (the central gateways) would both get: keep state folders on a
local or block volume, as SQLite wants anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from services.gateway.errors import GatewayStopped

LOCK_NAME = "lock"


class StateFolderBusy(GatewayStopped):
    """Another gateway, or a dead-letter replay, is working on this state folder."""


@contextlib.contextmanager
def state_folder_lock(state_dir: Path, holder: str) -> Iterator[None]:
    """Hold the folder's lock while the block runs; StateFolderBusy at once when another process holds
    it (named in the message), GatewayStopped when the folder cannot be opened at all."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o600), True
        except PermissionError:  # made by another user (a replay run as root): a read-only handle locks too
            fd, writable = os.open(path, os.O_RDONLY), False
    except OSError as error:
        raise GatewayStopped(f"the state folder {state_dir} cannot be used: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise StateFolderBusy(
                f"the state folder {state_dir} is in use (last taken by {held_by}): a gateway and a "
                "dead-letter replay cannot work on one folder at once; stop the other first"
            ) from None
        if writable:
            text = f"pid {os.getpid()}, {holder}\n".encode()
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
        yield
    finally:
        os.close(fd)  # releases the lock

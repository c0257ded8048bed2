"""One process at a time on a gateway's state folder.

The newest-send guard (records.py `judge`) is read before a store and written after it, so a dead-letter
replay run beside the gateway on the same folder could store an older send over one the gateway stored
meanwhile, and two gateways on one folder would each take the other's dead letters for their own. The
gateway and a replay therefore hold an exclusive `flock` on `<state folder>/lock` while they work. The
kernel releases it when the process ends, however it ends: a killed gateway leaves nothing to clean up.
The file names who holds it (process id and what it is), for the message the next one gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from services.gateway.worker import GatewayStopped

LOCK_NAME = "lock"


class StateFolderBusy(GatewayStopped):
    """Another gateway, or a dead-letter replay, is working on this state folder."""


@contextlib.contextmanager
def state_folder_lock(state_dir: Path, holder: str) -> Iterator[None]:
    """Hold the folder's lock while the block runs; StateFolderBusy at once when another process holds
    it (named in the message)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise StateFolderBusy(
                f"the state folder {state_dir} is in use ({held_by}): a gateway and a dead-letter replay "
                "cannot work on one folder at once; stop the other first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {holder}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

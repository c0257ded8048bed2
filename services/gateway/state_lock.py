"""One process at a time on a gateway's state folder.

The newest-send guard (records.py `judge`) is read before a store and written after it, so a dead-letter
replay run beside the gateway on the same folder could store an older send over one the gateway stored
meanwhile, and two gateways on one folder would each take the other's dead letters for their own. The
gateway and a replay therefore hold an exclusive `flock` on the state folder itself while they work
(any user who may use the folder can open it, whoever made the files in it). The kernel releases it when
the process ends, however it ends: a killed gateway leaves nothing to clean up. `<state folder>/lock`
names who took it last (process id and what it is), for the message the next one gets; it is written
when it can be and is only ever a note. On NFS, Linux takes `flock` as a POSIX lock, which needs a
writable file and which two workers of one process (the central gateways) would both get: keep state
folders on a local or block volume, as SQLite wants anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from services.gateway.errors import GatewayStopped

NOTE_NAME = "lock"


class StateFolderBusy(GatewayStopped):
    """Another gateway, or a dead-letter replay, is working on this state folder."""


@contextlib.contextmanager
def state_folder_lock(state_dir: Path, holder: str) -> Iterator[None]:
    """Hold the folder's lock while the block runs; StateFolderBusy at once when another process holds
    it (named in the message when the note says), GatewayStopped when the folder cannot be opened."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise GatewayStopped(f"the state folder {state_dir} cannot be used: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateFolderBusy(
                f"the state folder {state_dir} is in use ({_last_taken_by(state_dir)}): a gateway and a "
                "dead-letter replay cannot work on one folder at once; stop the other first"
            ) from None
        _note(state_dir, f"pid {os.getpid()}, {holder}")
        yield
    finally:
        os.close(fd)  # releases the lock


def _note(state_dir: Path, text: str) -> None:
    """Who holds the lock, for the next one refused (readable by all: it names a process, nothing more)."""
    with contextlib.suppress(OSError):  # made by another user, or a full disk: the lock holds without it
        data = f"{text}\n".encode()
        fd = os.open(state_dir / NOTE_NAME, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def _last_taken_by(state_dir: Path) -> str:
    try:
        with (state_dir / NOTE_NAME).open("rb") as note:
            said = note.read(200).decode("utf-8", "replace").strip()
    except OSError:
        said = ""
    return f"last taken by {said}" if said else "by another process"

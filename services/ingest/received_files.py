"""The files C-STORE data sets are received into, made with one `open` each.

pynetdicom makes each received data set's file with `tempfile.NamedTemporaryFile`, which costs, per
instance, a random name (a `getpid`), an absolute-path check, a buffered file object (`fstat`, a
failing `ioctl` to ask whether it is a terminal, `lseek`) and its wrapper (issue 10: ~35 us per
instance in ingest's DUL threads). A `ReceivedFile` is one `os.open` (exclusive create, private mode
0600, like `mkstemp`) of a name unique to this process, with the few things pynetdicom and
`dimse_receive` use of the temporary file: `name`, `write`, `file.flush`, `tell`, `close`. It is opened for
reading too, so acceptance maps the received instance from this descriptor instead of opening the
file again (`open_fd`), and it counts the bytes written, so nobody asks the file for its size.
Writes go straight to the descriptor: nothing is buffered, so there is nothing to flush.

`ReceivedFiles.receiving` counts the data sets being received at the moment (a file started, its last
fragment not written yet, not closed): the group commit (commit_group.py) waits, at most its
`gather_s`, for those too, not only for instances already being stored. With two `storescu`
associations a leader otherwise found the other association's instance still arriving about half
the time and committed alone: ~1.5 instances per Kafka produce request and receipt claim, not 2.
A transfer that began more than `RECEIVING_HORIZON_S` ago is not counted: a slow or stalled sender
never holds groups back.

A transfer the sender abandons midway (A-ABORT, a dropped connection, the network timeout) is
`abandon`ed when its association's DUL thread ends (`dimse_receive.drop_abandoned_data_set`): its
file closed and removed. A file object closed its descriptor when garbage-collected and this does not
by itself, so without that every abandoned transfer kept one descriptor open, and its partial file,
for the life of the process (issue 9). A file dropped unclosed any other way (a complete data set
queued behind another request when the association ended, never served) has its descriptor closed
when it is collected (`__del__`); its file is left for the blob collection, which removes stale temporaries
(`services/common/blob_lifecycle.py`).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_ATTEMPTS = 100  # as tempfile.TMP_MAX: a name taken (by another process's luck) is tried again
RECEIVING_HORIZON_S = 0.5  # a CT data set arrives in a few ms on a LAN; a longer transfer is not waited for


class ReceivedFile:
    """One data set's file, open for writing (and reading) until `close`."""

    def __init__(
        self, fd: int, name: str, done: Callable[[ReceivedFile], None] | None = None, limit: int | None = None
    ) -> None:
        self.fd = fd
        self.name = name
        self.size = 0  # bytes written
        # Past `limit` bytes nothing more is written (the instance is refused as too large, unread): a
        # sender's 50 GB data set filled the blob volume every stage shares before it was refused.
        self.limit = limit
        self.offered = 0  # bytes given to `write`, kept or not
        self.over_limit = False
        self.write_error = ""  # the OSError's type when a write failed (a full disk): the rest is dropped
        self.file = self  # pynetdicom calls `file.flush()` after each fragment it writes
        self._done = done  # told once: the last fragment was written, or the file closed
        self.complete = False  # the last fragment was written (dimse_receive): never `abandon`ed

    def received(self) -> None:
        """The data set's last fragment is written (dimse_receive): it is no longer `receiving`."""
        self.complete = True
        self._untrack()

    def _untrack(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(self)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of `data` (a regular file takes it in one call, barring a signal or a full disk)."""
        view = memoryview(data)
        total = len(view)
        self.offered += total
        if self.over_limit or (self.limit is not None and self.size + total > self.limit):
            self.over_limit = True
            return total  # taken, and dropped
        if self.write_error:
            return total
        try:
            written = os.write(self.fd, view)
            while written < total:
                written += os.write(self.fd, view[written:])
        except OSError as exc:
            # Raised here, in the association's receiving thread, it aborted the association with a
            # traceback on stderr; the request is answered "try again" (A700) once its data set is in.
            self.write_error = type(exc).__name__
            log.warning("received data set not written", extra={"error": self.write_error})
            return total
        self.size += total
        return total

    def flush(self) -> None:
        """Nothing is buffered here."""

    def tell(self) -> int:
        """Where the next write goes: the bytes written so far (`missing_data_sets` watches it grow)."""
        return self.size

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self._untrack()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def abandon(self) -> bool:
        """Close and remove the file of a data set whose last fragment never came, its association
        ended: nobody will accept it. A complete one is left alone (it may be on its way into the
        blob store). True when removed."""
        return not self.complete and self.remove()

    def remove(self) -> bool:
        """Close and remove the file, whatever became of its data set; True when removed (False: removed
        already, or moved into the store under its object's name)."""
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:  # removed already, or moved into the store
            return False
        except OSError as exc:  # not ours to remove: the store's sweep has it
            log.warning("received file not removed", extra={"error": type(exc).__name__})
            return False
        return True

    def __del__(self) -> None:
        # Dropped unclosed (module doc): its descriptor is not kept for the life of the process. Only
        # ever runs once nothing else refers to this file, so the number cannot be in use elsewhere.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with suppress(OSError):
                os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0


class ReceivedFiles:
    """Stands in for `tempfile.NamedTemporaryFile` where pynetdicom (and `dimse_receive`) start a
    received data set's file: `folder/<prefix><process token>-<n><suffix>`."""

    def __init__(self, folder: Path, prefix: str, limit: int | None = None) -> None:
        self._folder = os.fspath(folder)
        self._prefix = prefix
        self._limit = limit  # each file's (ReceivedFile.limit)
        self._token = secrets.token_hex(6)
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # id of each file being received: when it was started

    def receiving(self) -> int:
        """Data sets being received, each started less than `RECEIVING_HORIZON_S` ago."""
        with self._lock:
            if not self._started:
                return 0
            oldest = time.monotonic() - RECEIVING_HORIZON_S
            for key in [key for key, started in self._started.items() if started < oldest]:
                del self._started[key]  # never told (an abandoned transfer) or slow: forgotten
            return len(self._started)

    def _received(self, file: ReceivedFile) -> None:
        with self._lock:
            self._started.pop(id(file), None)

    def __call__(self, delete: bool = False, mode: str = "wb", suffix: str = "") -> ReceivedFile:
        """A new file; `delete` and `mode` are pynetdicom's arguments (False, "wb"), taken as given."""
        for _ in range(_ATTEMPTS):
            name = f"{self._folder}/{self._prefix}{self._token}-{next(self._numbers)}{suffix}"
            try:
                file = ReceivedFile(os.open(name, _FLAGS, 0o600), name, self._received, self._limit)
            except FileExistsError:  # left by an earlier process that drew the same token
                self._token = secrets.token_hex(6)
                continue
            with self._lock:
                self._started[id(file)] = time.monotonic()
            return file
        raise FileExistsError(f"no free name for a received file in {self._folder}")

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
"""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_ATTEMPTS = 100  # as tempfile.TMP_MAX: a name taken (by another process's luck) is tried again


class ReceivedFile:
    """One data set's file, open for writing (and reading) until `close`."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.size = 0  # bytes written
        self.file = self  # pynetdicom calls `file.flush()` after each fragment it writes

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of `data` (a regular file takes it in one call, barring a signal or a full disk)."""
        view = memoryview(data)
        total = len(view)
        written = os.write(self.fd, view)
        while written < total:
            written += os.write(self.fd, view[written:])
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
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0


class ReceivedFiles:
    """Stands in for `tempfile.NamedTemporaryFile` where pynetdicom (and `dimse_receive`) start a
    received data set's file: `folder/<prefix><process token>-<n><suffix>`."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self._folder = os.fspath(folder)
        self._prefix = prefix
        self._token = secrets.token_hex(6)
        self._numbers = itertools.count()

    def __call__(self, delete: bool = False, mode: str = "wb", suffix: str = "") -> ReceivedFile:
        """A new file; `delete` and `mode` are pynetdicom's arguments (False, "wb"), taken as given."""
        for _ in range(_ATTEMPTS):
            name = f"{self._folder}/{self._prefix}{self._token}-{next(self._numbers)}{suffix}"
            try:
                return ReceivedFile(os.open(name, _FLAGS, 0o600), name)
            except FileExistsError:  # left by an earlier process that drew the same token
                self._token = secrets.token_hex(6)
        raise FileExistsError(f"no free name for a received file in {self._folder}")

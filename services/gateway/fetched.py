"""A fetched and verified object, as the targets read it: its bytes when it is small enough to hold
(fetch.py keeps up to IN_MEMORY_UP_TO in memory), else a temp file under the gateway's state folder.

Before, every object went through a temp file: written as it arrived, read back to send it (its meta
group by pydicom, then the data set), deleted. For a 527 KB CT that was a file created, written, read
twice and unlinked per instance, for bytes the gateway already had. A target that needs a file (a
deflated data set padded or inflated into a copy beside it) asks for one with `on_disk`.
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from services.gateway.scratch_files import new_scratch_file

# At most this much of one object is held in memory; with the fetch-ahead pool (2) and the one being
# stored, a gateway holds at most three, 12 MiB. Larger objects (a 600 MiB enhanced MR) stay on disk.
IN_MEMORY_UP_TO = 4 * 1024 * 1024


class Fetched:
    """The object's bytes (`data`) or its file (`path`); `discard` deletes a file the fetch made."""

    def __init__(
        self, data: bytes | bytearray | None = None, path: Path | None = None, scratch: Path | None = None
    ) -> None:
        if (data is None) == (path is None):
            raise ValueError("a fetched object is bytes or a file, not both")
        self.data, self.path = data, path
        self._scratch = scratch  # where `on_disk` writes bytes (None: beside nothing, the temp folder)
        self._written: Path | None = None

    @classmethod
    def in_file(cls, path: Path) -> Fetched:
        """A file already on disk (the caller owns it: `discard` deletes it too)."""
        return cls(path=path)

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path or "")

    def open(self) -> BinaryIO:
        """The object from its first byte; the caller closes it."""
        if self.data is not None:
            return BytesIO(self.data)
        assert self.path is not None
        return self.path.open("rb")

    def on_disk(self) -> Path:
        """A file holding the object: its own, or one written now from the bytes (deleted by `discard`)."""
        if self.path is not None:
            return self.path
        if self._written is None:
            fd, path = new_scratch_file(self._scratch)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(self.data or b"")
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            self._written = path
        return self._written

    def discard(self) -> None:
        for path in (self.path, self._written):
            if path is not None:
                path.unlink(missing_ok=True)

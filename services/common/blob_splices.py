"""Spliced objects: a stored object whose bytes are an inline head followed by the rest (from an
offset to its end) of another stored object, its source.

The deid stage's output is a new header of a few kilobytes followed by the input's Pixel Data element,
byte for byte the tail of the ingest blob it read (already durable: ingest fsynced it before its event
existed). Writing that tail again cost the kernel's copy of half a megabyte per CT instance into the
page cache and its fsync (issue #10); a splice record names it instead. Its SHA-256 and size are those
of its whole logical bytes, so nothing downstream can tell it from an object written whole: every
read goes through the store (`LocalBlobStore.get/open/verify/extent`).

On disk a record sits beside where the plain object would be, named `<sha256>.splice`:

    imx-splice 1\\n
    <source sha256> <offset> <source size>\\n
    <head bytes>

The source's size is recorded so that a reader notices a source that is not the one spliced (gone,
truncated, replaced) and reports the object as corrupt (BlobCorrupt) rather than serving other bytes.
A record only ever names a plain object as its source (never another record), so a read is one hop.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common.messages import PhiSafeError

SPLICE_SUFFIX = ".splice"
_MAGIC = b"imx-splice 1\n"


class SpliceMalformed(PhiSafeError):
    pass


class ExtentChanged(OSError):
    """The file an extent names no longer has the size it had: not the bytes the extent was made of."""


@dataclass(frozen=True)
class Splice:
    """A spliced object's record: `head`, then `source`'s bytes from `offset` to its end."""

    source: str
    offset: int
    source_size: int
    head: bytes

    @property
    def size(self) -> int:
        return len(self.head) + self.source_size - self.offset

    def encode(self) -> bytes:
        return _MAGIC + f"{self.source} {self.offset} {self.source_size}\n".encode("ascii") + self.head


def decode_splice(record: bytes) -> Splice:
    if not record.startswith(_MAGIC):
        raise SpliceMalformed("not a splice record")
    end = record.find(b"\n", len(_MAGIC))
    try:
        source, offset, source_size = record[len(_MAGIC) : end].decode("ascii").split(" ")
        splice = Splice(source, int(offset), int(source_size), record[end + 1 :])
    except ValueError:
        raise SpliceMalformed("unreadable splice record") from None
    if end < 0 or len(source) != 64 or not 0 <= splice.offset <= splice.source_size:
        raise SpliceMalformed("unreadable splice record")
    return splice


@dataclass(frozen=True)
class Extent:
    """Where an object's bytes are: `head`, then `count` bytes of the file `path` from `offset`, which
    are that file's last bytes (a plain object: no head, its whole file). A sender sends the head and
    then the range with sendfile; `open` reads it as one file."""

    head: bytes
    path: Path
    offset: int
    count: int

    @property
    def size(self) -> int:
        return len(self.head) + self.count

    @property
    def file_size(self) -> int:
        """The size the file must have: any other and it is not the file this extent was made from."""
        return self.offset + self.count

    def open(self) -> BinaryIO:
        """The object's bytes as a seekable binary file at 0 (the plain file itself when there is no
        head). FileNotFoundError when the file is gone, ExtentChanged when its size is not `file_size`
        (objects are never rewritten in place: collected and written again, or damaged)."""
        file = open(self.path, "rb")  # noqa: SIM115 - handed to the caller
        try:
            if os.fstat(file.fileno()).st_size != self.file_size:
                raise ExtentChanged("the object's file changed size")
        except BaseException:
            file.close()
            raise
        if not self.head and not self.offset:
            return file
        return io.BufferedReader(SplicedReader(self.head, file, self.offset, self.count))


class SplicedReader(io.RawIOBase):
    """A read-only, seekable view of `head` followed by `count` bytes of `file` from `offset`; closing
    it closes `file`. It has no file descriptor of its own (fileno raises): map the source instead."""

    def __init__(self, head: bytes, file: BinaryIO, offset: int, count: int) -> None:
        super().__init__()
        self._head, self._file, self._offset, self._count = head, file, offset, count
        self._size = len(head) + count
        self._position = 0

    @property
    def name(self) -> str:
        """No file has these bytes (readers such as pydicom ask for a name; never reopen the source)."""
        return ""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        position, head = self._position, self._head
        if position >= self._size or not len(view):
            return 0
        if position < len(head):
            n = min(len(view), len(head) - position)
            view[:n] = head[position : position + n]
        else:
            wanted = min(len(view), self._size - position)
            n = os.preadv(self._file.fileno(), [view[:wanted]], self._offset + position - len(head))
        self._position += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()

"""Content-addressed blob store (claim check): DICOM bytes live here, Kafka carries the SHA-256.

`LocalBlobStore` writes atomically (temp file in the same directory, fsync, rename, fsync of the
directory; a fan-out folder it creates is fsynced in its parent too), so a crash mid-write never
leaves a partial object under its final name, and concurrent writers of the same content simply both
succeed. Which folder an object lives in: blob_layout.py. Another backend (S3-compatible, say) would
implement `BlobStore`.

Objects of any size (ingest accepts up to 1 GiB) never need to be held whole in memory: `put_file`
moves a file that is already on disk into the store (a rename on the same filesystem; hashed unless
its writer hashed it as it wrote it, as ingest's C-STORE receiver does), `put_chunks`
writes pieces as they come, hashing as it writes, and `open` hands out the stored file, checked
against its hash by reading it in pieces, or, given the size its event carries, by that size alone
(each object is hashed once, when written; `verify` rehashes one for a scrub).

An object may also be stored spliced (blob_splices.py): a small record holding its first bytes and
naming a byte range, to its end, of another stored object, so bytes already durable in the store are
not written twice (`put_spliced`). Readers never see the difference: `get`, `open`, `verify`, `exists`
and `extent` (where a sender finds the bytes to send with sendfile) answer for either kind, and a
spliced object whose source is gone or changed is corrupt (BlobCorrupt), never served as other bytes.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from services.common.blob_layout import ONE_LEVEL, make_fan_out_folders, object_path, store_levels
from services.common.blob_splices import SPLICE_SUFFIX, Extent, ExtentChanged, Splice, SpliceMalformed, decode_splice
from services.common.messages import PhiSafeError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
# Large pieces are hashed and written this much at a time: pages of a memory-mapped source are let
# go after each window (below), so a mapped input costs a window of resident memory, not its size.
WRITE_WINDOW = 8 * 1024 * 1024
_READ_PIECE = 1024 * 1024


class BlobNotFound(PhiSafeError):
    pass


class BlobCorrupt(PhiSafeError):
    pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(file: BinaryIO) -> str:
    """SHA-256 of an open file from its current position, read in pieces (never whole in memory)."""
    hasher = hashlib.sha256()
    while piece := file.read(_READ_PIECE):
        hasher.update(piece)
    return hasher.hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store and return the SHA-256 (hex) of `data`; storing existing content is a no-op."""
        ...

    def put_file(self, source: Path, sha256: str | None = None) -> str:
        """Store the file at `source` and return its SHA-256; `source` is gone afterwards (moved in).
        `sha256`: the file's hash, when its writer computed it as it wrote it (the file is not read)."""
        ...

    def put_chunks(self, chunks: Iterable[bytes | memoryview]) -> tuple[str, int]:
        """Store the concatenation of `chunks` without joining them; returns (SHA-256, size)."""
        ...

    def get(self, sha256: str, size: int | None = None) -> bytes:
        """The object, checked against its hash; with `size`, checked by its size only (see `trusted`)."""
        ...

    def open(self, sha256: str, size: int | None = None) -> BinaryIO:
        """The object as a seekable local file, positioned at 0, checked as `get` checks it."""
        ...

    def exists(self, sha256: str) -> bool: ...


@runtime_checkable
class SplicingBlobStore(BlobStore, Protocol):
    def put_spliced(self, head: bytes, tail: memoryview, source: str, offset: int) -> tuple[str, int]:
        """Store `head` + `tail`, where `tail` is the stored object `source`'s bytes from `offset` to
        its end, without writing the tail again (a splice record); written whole when `source` is not
        such a stored object. Returns (SHA-256, size) of the whole."""
        ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self.levels = store_levels(self.root)  # fan-out folder levels (blob_layout.py)
        if self.levels == ONE_LEVEL:
            make_fan_out_folders(self.root)

    def path_for(self, sha256: str) -> Path:
        return Path(self.object_path(sha256))

    def object_path(self, sha256: str) -> str:
        """`path_for` as a string: the per-instance calls (deid, delivery) go straight to os calls,
        without building a Path of three joins each time."""
        if not _SHA256_HEX.match(sha256):
            raise ValueError("blob id must be 64 lower-case hex characters")
        return object_path(self._root, sha256, self.levels)

    def splice_path_for(self, sha256: str) -> Path:
        """Where the object's splice record is, when it is stored spliced (blob_splices.py)."""
        return self.path_for(sha256).with_name(sha256 + SPLICE_SUFFIX)

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        final = self.path_for(digest)
        if already_stored(final):
            return digest
        make_durable_parents(final)
        replace_atomically(final, lambda tmp: tmp.write(data))
        fsync_directory(final.parent)
        return digest

    def put_file(self, source: Path, sha256: str | None = None) -> str:
        """Hash `source` in pieces (unless its writer gives `sha256`), make it durable and rename it
        into place (copy it when it lies on another filesystem). The caller's file is consumed either
        way; its mode is kept (private)."""
        given = None if sha256 is None else self.path_for(sha256)  # a bad id fails before any read
        with open(source, "rb") as file:
            digest = sha256 if sha256 is not None else file_sha256(file)
            os.fsync(file.fileno())  # durable before anyone hears "stored"
        final = given if given is not None else self.path_for(digest)
        if already_stored(final):
            source.unlink(missing_ok=True)
            return digest
        make_durable_parents(final)
        try:
            os.replace(source, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_in(source, final)
            source.unlink(missing_ok=True)
        fsync_directory(final.parent)
        return digest

    def put_chunks(self, chunks: Iterable[bytes | memoryview]) -> tuple[str, int]:
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb", buffering=0) as tmp:
                digest, size = write_hashed(tmp.fileno(), chunks)
                os.fsync(tmp.fileno())
            final = self.path_for(digest)
            if already_stored(final):
                Path(tmp_name).unlink(missing_ok=True)
                return digest, size
            make_durable_parents(final)
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        fsync_directory(final.parent)
        return digest, size

    def get(self, sha256: str, size: int | None = None) -> bytes:
        try:
            data = read_whole(self.object_path(sha256), size)
        except FileNotFoundError:
            with self._open_spliced(sha256) as file:
                data = file.read()
        if size is not None:
            _check_size(sha256, len(data), size)
        elif sha256_hex(data) != sha256:
            raise BlobCorrupt(f"blob {sha256} does not match its hash")
        return data

    def open(self, sha256: str, size: int | None = None) -> BinaryIO:
        """A plain object's own file; a spliced object's bytes as a file over its pieces (no fileno)."""
        try:
            file: BinaryIO = open(self.path_for(sha256), "rb")  # noqa: SIM115 - handed to the caller
        except FileNotFoundError:
            file = self._open_spliced(sha256)
        try:
            if size is not None:
                _check_size(sha256, file.seek(0, os.SEEK_END), size)
            elif file_sha256(file) != sha256:
                raise BlobCorrupt(f"blob {sha256} does not match its hash")
            file.seek(0)
        except BaseException:
            file.close()
            raise
        return file

    def verify(self, sha256: str, spliced: bool | None = None) -> bool:
        """True when the stored object still hashes to its name (`imx blobs verify`); a spliced one
        whose source is gone or changed is not sound. An object may be stored both whole and spliced
        (written whole once, spliced by a later write): `spliced` checks that form only (a scrub checks
        each), None the one reads use (whole first). FileNotFoundError: no such object in that form."""
        if not spliced:
            try:
                with open(self.path_for(sha256), "rb") as file:
                    return file_sha256(file) == sha256
            except FileNotFoundError:
                if spliced is False or not self.splice_path_for(sha256).exists():
                    raise
        try:
            with self._open_spliced(sha256) as file:
                return file_sha256(file) == sha256
        except BlobNotFound:
            raise FileNotFoundError(sha256) from None
        except BlobCorrupt:
            # The lifecycle deletes a record before its source: a source gone with its record gone
            # too is a collection that ran meanwhile, not damage.
            if not self.splice_path_for(sha256).exists():
                raise FileNotFoundError(sha256) from None
            return False

    def extent(self, sha256: str) -> Extent:
        """Where the object's bytes are, for a sender (delivery's sendfile): BlobNotFound when there is
        no such object, BlobCorrupt when it is spliced and its source is gone or not the one spliced.
        The sender opens the file and checks its size again (`Extent.open`): it may go meanwhile."""
        path = self.path_for(sha256)
        try:
            return Extent(b"", path, 0, os.stat(path).st_size)
        except FileNotFoundError:
            pass
        extent = self._extent_of(self._splice(sha256, str(path) + SPLICE_SUFFIX))
        try:
            actual = os.stat(extent.path).st_size
        except FileNotFoundError:
            raise BlobCorrupt(f"blob {sha256}: the object it is spliced from is gone") from None
        if actual != extent.file_size:
            raise BlobCorrupt(f"blob {sha256}: the object it is spliced from has changed")
        return extent

    def spliced(self, head: bytes, tail: memoryview, source: str, offset: int) -> tuple[str, int, Splice | None] | None:
        """The first half of `put_spliced`, shared with deid's batched writes: None when `source` is
        not a plain stored object of `offset + len(tail)` bytes (write the object whole), else
        (SHA-256, size, the record to write; None when the object is stored already: its time and its
        source's are refreshed for the lifecycle). The source's time is refreshed before the record
        exists, so a collection that chose it as old meanwhile re-checks its time and keeps it."""
        source_path = self.object_path(source)
        try:
            if os.stat(source_path).st_size != offset + len(tail):
                return None
        except FileNotFoundError:
            return None
        hasher = hashlib.sha256(head)
        for piece in windows((tail,)):
            hasher.update(piece)
        digest, size = hasher.hexdigest(), len(head) + len(tail)
        if not refreshed(source_path):
            return None
        whole = self.object_path(digest)
        if already_stored(whole) or already_stored(whole + SPLICE_SUFFIX):
            return digest, size, None
        return digest, size, Splice(source, offset, offset + len(tail), bytes(head))

    def put_spliced(self, head: bytes, tail: memoryview, source: str, offset: int) -> tuple[str, int]:
        planned = self.spliced(head, tail, source, offset)
        if planned is None:
            return self.put_chunks((head, tail))
        digest, size, splice = planned
        if splice is not None:
            final = self.splice_path_for(digest)
            make_durable_parents(final)
            replace_atomically(final, lambda tmp: tmp.write(splice.encode()))
            fsync_directory(final.parent)
        return digest, size

    def _splice(self, sha256: str, record_path: str | None = None) -> Splice:
        """The object's splice record (`record_path`: its path, when the caller has it). Read with
        bare os calls: delivery looks one up per fetch, and pathlib's read_bytes cost twice as much."""
        try:
            fd = os.open(record_path or self.splice_path_for(sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} not found") from None
        try:
            pieces = []
            while piece := os.read(fd, 1 << 16):
                pieces.append(piece)
        finally:
            os.close(fd)
        record = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        try:
            return decode_splice(record)
        except SpliceMalformed:
            raise BlobCorrupt(f"blob {sha256} has an unreadable splice record") from None

    def _extent_of(self, splice: Splice) -> Extent:
        return Extent(splice.head, self.path_for(splice.source), splice.offset, splice.source_size - splice.offset)

    def _open_spliced(self, sha256: str) -> BinaryIO:
        extent = self._extent_of(self._splice(sha256))
        try:
            return extent.open()
        except (FileNotFoundError, ExtentChanged):
            raise BlobCorrupt(f"blob {sha256}: the object it is spliced from is gone or changed") from None

    @staticmethod
    def _copy_in(source: Path, final: Path) -> None:
        replace_atomically(final, lambda tmp: copy_from(source, tmp))

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists() or self.splice_path_for(sha256).exists()


def drop_cached(fd: int) -> None:
    """Free the page-cache pages of `fd`'s file: a blob the pipeline has finished with (served, or read
    for the last time once the stage's own output is durable). On this VM's balloon, writing into pages
    freed a moment ago costs about half the CPU of pages not used for a while, and finished blobs would
    otherwise sit in the cache while every new blob takes fresh pages. The file is clean (fsynced when
    written), so the pages go at once; a later read reads it from disk. Best effort: a failure is ignored.
    Pages still referenced (e.g. sendfile's, until the peer has read them) are kept by the kernel."""
    with suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def drop_cached_path(path: str) -> None:
    """`drop_cached` for a file not held open (one open and close); a file gone meanwhile is ignored."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        drop_cached(fd)
    finally:
        os.close(fd)


class LaggedDrop:
    """Files sent by sendfile, closed and their pages dropped `lag` files later: right after the send
    the pages still sit in the peer's socket queue (the kernel keeps them, and DONTNEED would drop
    nothing), a few answers later the peer has read them. Holds at most `lag` open files; used from one
    thread (the server's event loop)."""

    def __init__(self, lag: int = 16) -> None:
        self._lag = lag
        self._held: deque[BinaryIO] = deque()

    def __call__(self, file: BinaryIO) -> None:
        self._held.append(file)
        while len(self._held) > self._lag:
            old = self._held.popleft()
            try:
                drop_cached(old.fileno())
            finally:
                old.close()

    def close(self) -> None:
        while self._held:
            self._held.popleft().close()


def _check_size(sha256: str, actual: int, expected: int) -> None:
    """The pipeline's reads trust an object's name: its SHA-256 was computed once, when it was written
    (and fsynced; the rename makes it visible only whole), and the event that names it carries that
    hash and the size. Rehashing on every read cost a third of a millisecond per 527 KB instance
    (issue #10); the size still catches a truncated or overwritten file, and `imx blobs verify`
    rehashes the whole store for bit rot."""
    if actual != expected:
        raise BlobCorrupt(f"blob {sha256} has {actual} bytes, its event says {expected}")


def windows(chunks: Iterable[bytes | memoryview], size: int = WRITE_WINDOW) -> Iterable[memoryview]:
    """`chunks` as views of at most `size` bytes, without copying.

    A view into a memory map (e.g. pixel data referenced from a mapped input) is paged in as it is
    read; after each window its pages are dropped from this process again (MADV_DONTNEED: for a
    read-only file mapping they stay in the page cache and come back from there if touched), so the
    process's resident memory grows by a window, not by the size of the input.
    """
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        mapped = view.obj if isinstance(view.obj, mmap.mmap) else None
        for start in range(0, len(view), size):
            yield view[start : start + size]
            if mapped is not None and not mapped.closed:
                mapped.madvise(mmap.MADV_DONTNEED)


def write_hashed(fd: int, chunks: Iterable[bytes | memoryview]) -> tuple[str, int]:
    """Write `chunks` to `fd` a window at a time (`windows`), hashing as it writes; (SHA-256, size)."""
    hasher = hashlib.sha256()
    size = 0
    for piece in windows(chunks):
        hasher.update(piece)
        write_all(fd, piece)
        size += len(piece)
    return hasher.hexdigest(), size


def refreshed(final: str | Path) -> bool:
    """True when the object `final` already exists. Its time is refreshed: the lifecycle keeps objects
    for a retention after they were last written (services/common/blob_lifecycle.py), and this content
    is in the pipeline once more. Gone (never written, or collected just now): False, write it again."""
    try:
        os.utime(final)
        return True
    except FileNotFoundError:
        return False


def already_stored(final: str | Path) -> bool:
    """`refreshed`, and its name made durable: it may be there from a writer killed between its rename
    and its folder's fsync (a replay after that kill found it, fsynced nothing, and published an event
    naming an object a power loss could take back). One fsync, only when the object exists."""
    if not refreshed(final):
        return False
    fsync_directory(Path(final).parent)
    return True


def read_whole(path: str, size: int | None = None) -> bytes:
    """The file at `path`, read with bare os calls (open, read, close: a Path's read_bytes adds an
    ioctl, two fstats and a seek). `size`: the size expected; a file of another size is still read
    whole, for the caller to refuse by its size."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        # One byte more than expected: a file of the expected size is read by one call, to its end.
        data = os.read(fd, size + 1)
        if len(data) != size:  # another size (or a short read): read on to the end
            data += _read_rest(fd)
        return data
    finally:
        os.close(fd)


def _read_rest(fd: int) -> bytes:
    pieces = []
    while piece := os.read(fd, _READ_PIECE):
        pieces.append(piece)
    return b"".join(pieces)


def write_all(fd: int, data: memoryview) -> None:
    """Write all of `data` to `fd`, carrying on after short writes."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def replace_atomically(
    target: Path,
    fill: Callable[[BinaryIO], object],
    make_temp: Callable[[], tuple[int, str | Path]] | None = None,
    sync: bool = True,
) -> None:
    """Write a temp file with `fill`, fsync it (unless not `sync`) and rename it over `target`: a crash
    leaves the old file or the new one, never half of one, and a failed write no temp file. The temp
    file is `make_temp()`'s (an open descriptor and its path; on `target`'s file system), by default a
    `.tmp-` file beside it. The caller fsyncs the folder."""
    fd, tmp_name = make_temp() if make_temp is not None else tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as tmp:
            fill(tmp)
            tmp.flush()
            if sync:
                os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def copy_from(source: Path, into: BinaryIO) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, into, 1024 * 1024)


def make_durable_parents(path: Path) -> None:
    """Create the folders above `path` that are missing, each made durable in its parent (an fsync of
    the parent after the mkdir): the object's own rename is fsynced in its folder, but a folder just
    created would otherwise be lost with the object in it by a power cut. Existing folders (nearly
    always: a one-level store makes its 256 at opening, an old two-level store has most of its 65,536)
    cost one stat."""
    for folder in missing_parents(path):
        folder.mkdir(exist_ok=True)
        fsync_directory(folder.parent)


def missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, outermost first."""
    missing: list[Path] = []
    parent = path.parent
    while not parent.is_dir():
        missing.append(parent)
        parent = parent.parent
    return missing[::-1]


def fsync_directory(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_umask() -> int:
    """The umask, read without setting it: os.umask sets it to read it, and for that moment any file or
    folder another thread makes (the central gateways' partner workers) ignores it. 022 when unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022

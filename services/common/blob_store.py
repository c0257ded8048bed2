"""Content-addressed blob store (claim check): DICOM bytes live here, Kafka carries the SHA-256.

`LocalBlobStore` writes atomically (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash mid-write never leaves a partial object under its final name, and concurrent
writers of the same content simply both succeed. An S3-compatible backend implements `BlobStore` too.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from services.common.messages import PhiSafeError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(PhiSafeError):
    pass


class BlobCorrupt(PhiSafeError):
    pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store and return the SHA-256 (hex) of `data`; storing existing content is a no-op."""
        ...

    def get(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not _SHA256_HEX.match(sha256):
            raise ValueError("blob id must be 64 lower-case hex characters")
        # Two levels of fan-out keep directories small at millions of objects.
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        final = self.path_for(digest)
        if final.exists():
            # Fresh again: the lifecycle keeps objects for a retention after they were last written
            # (services/common/blob_lifecycle.py), and this content is in the pipeline once more.
            try:
                os.utime(final)
                return digest
            except FileNotFoundError:  # collected just now: write it again
                pass
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_directory(final.parent)
        return digest

    def get(self, sha256: str) -> bytes:
        try:
            data = self.path_for(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} not found") from None
        if sha256_hex(data) != sha256:
            raise BlobCorrupt(f"blob {sha256} does not match its hash")
        return data

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def sweep_temporaries(self) -> int:
        """Remove temp files left by writers that crashed; returns how many were removed."""
        removed = 0
        for leftover in self.root.rglob(".tmp-*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

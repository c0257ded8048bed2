"""De-identify a file into a file: the I/O shell around the engine for `imx deid` and `make bench-deid`.

The output is written with one writev of the result's chunks (new header + the input's Pixel Data
as a view), so half a megabyte of pixels is not copied once more just to be joined.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.deid.engine import DeidResult, Profile, deidentify


def deidentify_file(source: Path, target: Path, profile: Profile, key: bytes) -> DeidResult:
    """Read ``source``, de-identify it, write ``target`` (replaced if it exists). DeidError: nothing written."""
    result = deidentify(source.read_bytes(), profile, key)
    write_chunks(target, result.chunks)
    return result


def write_chunks(target: Path, chunks: tuple[bytes | memoryview, ...]) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pending = [memoryview(chunk) for chunk in chunks if len(chunk)]
        while pending:
            written = os.writev(fd, pending)
            while pending and written >= len(pending[0]):  # a short write: carry on where it stopped
                written -= len(pending[0])
                pending.pop(0)
            if pending and written:
                pending[0] = pending[0][written:]
    finally:
        os.close(fd)

"""A writer killed mid-write leaves no partial object under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common.blob_lifecycle import STALE_TEMPORARY_S, collect
from services.common.blob_store import LocalBlobStore, sha256_hex

WRITER = """
import sys, time
from pathlib import Path
from services.common import blob_store


real_fdopen = blob_store.os.fdopen
def slow_fdopen(fd, mode):
    handle = real_fdopen(fd, mode)
    real_write = handle.write
    def write(data):
        for i in range(0, len(data), 65536):
            real_write(data[i:i + 65536]); handle.flush()
            time.sleep(0.01)
        return len(data)
    handle.write = write
    return handle
blob_store.os.fdopen = slow_fdopen
store = blob_store.LocalBlobStore(Path(sys.argv[1]))
print("writing", flush=True)
store.put(b"x" * (8 * 1024 * 1024))
"""


def test_a_writer_killed_mid_write_leaves_no_partial_object(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.monotonic() + 10
    while not list(root.rglob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    temporaries = list(root.rglob(".tmp-*"))
    assert temporaries and temporaries[0].stat().st_size < 8 * 1024 * 1024, "killed while writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    store = LocalBlobStore(root)
    digest = sha256_hex(b"x" * (8 * 1024 * 1024))
    assert not store.exists(digest), "a partial write must not appear under the content's name"
    later = time.time() + STALE_TEMPORARY_S + 1
    assert collect(root, set, clock=lambda: later).temporaries == len(temporaries), "an hour on, it is swept"
    assert not list(root.rglob(".tmp-*"))
    assert store.put(b"x" * (8 * 1024 * 1024)) == digest
    assert store.get(digest) == b"x" * (8 * 1024 * 1024)

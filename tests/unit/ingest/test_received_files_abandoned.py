"""Received files whose transfer was abandoned (services/ingest/received_files.py): closed, and removed
only when their data set never completed. Over real associations: tests/integration/ingest/
test_scp_abandoned_transfers.py."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from services.ingest.received_files import ReceivedFiles


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_an_abandoned_incomplete_file_is_closed_removed_and_no_longer_receiving(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path, ".tmp-c-store-")
    file = files(delete=False, mode="wb", suffix=".dcm")
    file.write(b"part of a data set")
    fd = file.fd
    assert file.abandon()
    assert file.closed and not _open(fd)
    assert not Path(file.name).exists()
    assert files.receiving() == 0
    assert not file.abandon()  # twice: nothing left to remove


def test_a_complete_file_is_never_removed_by_abandon(tmp_path: Path) -> None:
    file = ReceivedFiles(tmp_path, ".tmp-c-store-")(delete=False, mode="wb", suffix=".dcm")
    file.write(b"a whole data set")
    file.received()  # its last fragment: acceptance may be moving it into the store
    assert not file.abandon()
    assert not file.closed
    file.close()
    assert Path(file.name).read_bytes() == b"a whole data set"


def test_a_file_dropped_unclosed_has_its_descriptor_closed(tmp_path: Path) -> None:
    file = ReceivedFiles(tmp_path, ".tmp-c-store-")(delete=False, mode="wb", suffix=".dcm")
    fd, name = file.fd, file.name
    del file
    gc.collect()
    assert not _open(fd)
    assert Path(name).exists()  # left for the store's sweep: it may have been a complete data set

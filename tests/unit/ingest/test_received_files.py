"""The files C-STORE data sets are received into (services/ingest/received_files.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore, sha256_hex
from services.common.topics import Topics
from services.ingest import received_files
from services.ingest.acceptance import Acceptance, Accepted
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.received_files import ReceivedFiles
from tests.unit.ingest.samples import mr_study


class Bus:
    def publish(self, messages: object, timeout_s: float = 60.0) -> None:
        pass


def test_a_received_file_is_private_named_as_the_stores_temporaries_and_counts_what_is_written(
    tmp_path: Path,
) -> None:
    file = ReceivedFiles(tmp_path, ".tmp-c-store-")(delete=False, mode="wb", suffix=".dcm")
    file.write(b"abc")
    file.write(memoryview(b"0123456789")[2:5])
    file.file.flush()  # as pynetdicom calls it
    assert (file.size, file.tell()) == (6, 6)
    file.close()
    file.close()  # twice is harmless, as for a file object
    path = Path(file.name)
    assert path.parent == tmp_path and path.name.startswith(".tmp-c-store-") and path.suffix == ".dcm"
    assert path.read_bytes() == b"abc234"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_received_files_never_reuse_a_name_even_one_left_by_another_process(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path, ".tmp-c-store-")
    first = files()
    # Another process drew the same token: the next name is already there.
    taken = first.name.rsplit("-", 1)[0] + "-1"
    Path(taken).write_bytes(b"someone else's")
    second = files()
    assert second.name not in (first.name, taken)
    assert Path(taken).read_bytes() == b"someone else's"
    first.close()
    second.close()


def test_an_instance_accepted_through_its_writers_descriptor_is_stored_whole_and_the_file_not_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    data = bytes(128) + mr_study(1)[0][128:]
    file = ReceivedFiles(tmp_path / "blobs", ".tmp-c-store-")(suffix=".dcm")
    file.write(data)
    acceptance = Acceptance(
        blobs=blobs, receipts=MemoryReceiptStore(), bus=Bus(), topics=Topics("t-"), max_instance_bytes=10_000_000
    )
    opened: list[str] = []
    real_open = open

    def watched_open(path: object, *args: object, **kwargs: object) -> object:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", watched_open)
    result = acceptance.accept_file(
        Path(file.name),
        "trust-a",
        "c-store",
        preamble_written_zero=True,
        sha256=sha256_hex(data),
        received=(file.fd, file.size),
    )
    monkeypatch.undo()
    file.close()
    assert isinstance(result, Accepted)
    assert blobs.get(result.sha256) == data
    assert not Path(file.name).exists()
    # Only the blob store opened it (to make it durable); acceptance read it through the descriptor.
    assert opened.count(file.name) == 1


def test_a_data_set_is_receiving_from_its_file_until_its_last_fragment_or_close(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path, ".tmp-c-store-")
    assert files.receiving() == 0
    first = files(delete=False, mode="wb", suffix=".dcm")
    second = files(delete=False, mode="wb", suffix=".dcm")
    assert files.receiving() == 2
    first.received()
    first.received()  # told twice: counted once
    assert files.receiving() == 1
    first.close()
    assert files.receiving() == 1
    second.close()  # an aborted transfer's file closed before its last fragment
    assert files.receiving() == 0


def test_a_transfer_started_longer_ago_than_the_horizon_is_no_longer_receiving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ReceivedFiles(tmp_path, ".tmp-c-store-")
    now = [1_000.0]
    monkeypatch.setattr(received_files.time, "monotonic", lambda: now[0])
    stalled = files(delete=False, mode="wb", suffix=".dcm")
    assert files.receiving() == 1
    now[0] += received_files.RECEIVING_HORIZON_S + 0.01
    assert files.receiving() == 0  # never told (abandoned), or slow: forgotten
    stalled.close()  # told late: harmless
    assert files.receiving() == 0
    stalled_again = files(delete=False, mode="wb", suffix=".dcm")
    assert files.receiving() == 1
    stalled_again.close()

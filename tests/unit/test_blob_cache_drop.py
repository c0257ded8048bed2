"""Finished blobs' page-cache pages are let go (services/common/blob_store.py `drop_cached`): by delivery
once an object is sent whole (a few answers later, when the peer has read it), by deid for an input it
read for the last time once its output is durable. Real files throughout; the kernel call is only
recorded (and still made) to see which file it was made on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.common.blob_store import LaggedDrop, LocalBlobStore, drop_cached, drop_cached_path
from services.deid.batch_writes import BatchedBlobWrites
from services.deid.engine import DeidResult
from services.deid.handler import _write
from services.delivery.object_response import ObjectResponse
from services.proto_gen.imx.v1 import events_pb2

Calls = list[tuple[str, int, int, int]]


@pytest.fixture
def dropped(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Each posix_fadvise as (the file's path, offset, length, advice), made for real too."""
    calls: Calls = []
    real = os.posix_fadvise

    def recorded(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recorded)
    return calls


def stored_file(path: Path, data: bytes = b"DICM" * 1000) -> Path:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return path


def test_the_whole_file_of_the_given_descriptor_is_advised_dontneed(tmp_path: Path, dropped: Calls) -> None:
    path = stored_file(tmp_path / "blob")
    with open(path, "rb") as file:
        drop_cached(file.fileno())
        assert file.read() == b"DICM" * 1000  # still readable: only its cached copy may go
    assert dropped == [(str(path), 0, 0, os.POSIX_FADV_DONTNEED)]


def test_a_failing_advice_never_fails_the_caller(tmp_path: Path) -> None:
    fd = os.open(stored_file(tmp_path / "blob"), os.O_RDONLY)
    os.close(fd)
    drop_cached(fd)  # EBADF: ignored
    drop_cached_path(str(tmp_path / "gone"))  # not there: ignored


def test_sent_files_are_closed_and_dropped_lag_files_later_in_order(tmp_path: Path, dropped: Calls) -> None:
    paths = [stored_file(tmp_path / f"blob-{n}") for n in range(5)]
    files = [open(p, "rb") for p in paths]  # noqa: SIM115 - handed to the LaggedDrop
    later = LaggedDrop(lag=2)
    for file in files:
        later(file)

    assert [call[0] for call in dropped] == [str(p) for p in paths[:3]]
    assert [f.closed for f in files] == [True, True, True, False, False]
    later.close()
    assert all(f.closed for f in files)
    assert len(dropped) == 3  # closing at the end drops nothing more


def test_an_object_sent_whole_is_handed_to_release_not_closed(tmp_path: Path) -> None:
    path = stored_file(tmp_path / "object.dcm", b"DICM" * 10)
    released: list[int] = []
    app = FastAPI()

    def release(file: object) -> None:
        released.append(os.fstat(file.fileno()).st_ino)  # type: ignore[attr-defined]
        file.close()  # type: ignore[attr-defined]

    @app.get("/object")
    def answer() -> ObjectResponse:
        return ObjectResponse(path, 40, "application/dicom", release)

    assert TestClient(app).get("/object").content == b"DICM" * 10
    assert released == [path.stat().st_ino]


def test_the_direct_answer_hands_over_its_file_only_when_written_whole(tmp_path: Path) -> None:
    path = stored_file(tmp_path / "object.dcm", b"DICM" * 10)
    released = []
    whole = ObjectResponse(path, 40, "application/dicom", released.append)
    whole.file_answer().done(True)
    broken = ObjectResponse(path, 40, "application/dicom", released.append)
    broken.file_answer().done(False)

    assert released == [whole.handle] and not whole.handle.closed
    assert broken.handle.closed
    whole.handle.close()


def test_deid_drops_an_input_it_is_finished_with_only_once_the_batch_is_durable(tmp_path: Path, dropped: Calls) -> None:
    store = LocalBlobStore(tmp_path)
    source = store.put(b"input " * 1000)
    writes = BatchedBlobWrites(store)
    # Not the stored input's tail (its size differs): written whole, so the input is read no more.
    sha, _ = writes.put_spliced(b"head", memoryview(b"x" * 10), source, 6)

    assert dropped == []
    writes.settle()
    assert {call[0] for call in dropped} == {str(store.path_for(source))}
    assert all(call[1:] == (0, 0, os.POSIX_FADV_DONTNEED) for call in dropped)
    assert store.get(sha) == b"head" + b"x" * 10


def test_deid_keeps_the_input_a_spliced_output_still_refers_to(tmp_path: Path, dropped: Calls) -> None:
    store = LocalBlobStore(tmp_path)
    data = b"header" + b"pixels" * 1000
    source = store.put(data)
    writes = BatchedBlobWrites(store)
    writes.put_spliced(b"new header", memoryview(data)[6:], source, 6)
    writes.settle()

    assert dropped == []  # delivery serves the input's tail; it drops it once sent


def test_an_output_written_whole_marks_its_input_finished_a_spliced_one_does_not(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = b"header" + b"pixels" * 1000
    source = store.put(data)
    ref = events_pb2.BlobRef(sha256=source, size=len(data))
    writes = BatchedBlobWrites(store)
    finished: list[str] = []
    writes.finished_with = finished.append  # type: ignore[method-assign]

    def result(chunks: tuple[bytes | memoryview, ...], offset: int | None) -> DeidResult:
        return DeidResult(
            chunks,
            "1.2",
            "1.2.3",
            "1.2.3.4",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.2.1",
            "CT",
            "anon",
            False,
            offset,
        )

    _write(writes, result((b"new header", memoryview(data)[6:]), 6), ref, splice=True)
    assert finished == []
    _write(writes, result((b"re-encoded",), None), ref, splice=True)
    assert finished == [source]
    writes.settle()

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.common import blob_store
from services.common.blob_store import BlobCorrupt, BlobNotFound, LocalBlobStore, sha256_hex
from services.deid import batch_writes
from services.deid.batch_writes import BatchedBlobWrites


def test_put_returns_the_sha256_and_get_returns_the_same_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store.put(b"dicom bytes")
    assert digest == sha256_hex(b"dicom bytes")
    assert store.exists(digest)
    assert store.get(digest) == b"dicom bytes"


def test_missing_and_corrupt_objects_are_reported(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    digest = store.put(b"original")
    store.path_for(digest).write_bytes(b"tampered")
    with pytest.raises(BlobCorrupt):
        store.get(digest)


def test_ids_that_are_not_sha256_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalBlobStore(tmp_path).get("../../etc/passwd")


def test_concurrent_writers_of_the_same_content_all_succeed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = bytes(range(256)) * 4096
    digests: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            digests.append(store.put(data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(digests) == {sha256_hex(data)}
    assert store.get(digests[0]) == data
    assert not list(tmp_path.rglob(".tmp-*")), "no temporary file is left behind"


def test_a_read_given_the_size_trusts_the_name_but_catches_a_truncated_or_grown_object(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store.put(b"original")
    store.path_for(digest).write_bytes(b"tampere")  # one byte short
    with pytest.raises(BlobCorrupt, match="7 bytes"):
        store.get(digest, size=8)
    with pytest.raises(BlobCorrupt):
        store.open(digest, size=8).close()
    store.path_for(digest).write_bytes(b"original plus")  # grown: its whole size is reported
    with pytest.raises(BlobCorrupt, match="13 bytes"):
        store.get(digest, size=8)
    store.path_for(digest).write_bytes(b"tampered")  # same size: only a rehash can tell
    assert store.get(digest, size=8) == b"tampered"
    assert not store.verify(digest)
    with pytest.raises(BlobCorrupt):
        store.get(digest)
    with store.open(digest, size=8) as file:
        assert file.read() == b"tampered"


def test_verify_rehashes_a_sound_object(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    assert store.verify(store.put(b"sound"))


def test_a_new_store_makes_its_256_folders_at_opening_and_makes_them_durable_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common import blob_store

    synced: list[Path] = []
    real = blob_store.fsync_directory
    monkeypatch.setattr(blob_store, "fsync_directory", lambda folder: (synced.append(Path(folder)), real(folder)))
    store = LocalBlobStore(tmp_path / "blobs")
    folders = sorted(p.name for p in store.root.iterdir() if p.is_dir())
    assert folders == [f"{i:02x}" for i in range(256)]
    assert synced.count(store.root) == 2  # the layout file's name, then the 256 folders: one fsync each
    synced.clear()
    digest = store.put(b"first")
    assert synced == [store.path_for(digest).parent]  # the object's rename only: no folder made for it
    synced.clear()
    LocalBlobStore(store.root)  # opened again (another replica, a restart): nothing to make
    assert synced == []


def test_a_folder_missing_when_an_object_needs_it_is_made_durable_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common import blob_store

    store = LocalBlobStore(tmp_path)  # opened first: its own fsyncs are not the object's
    fan_out = store.path_for(blob_store.sha256_hex(b"first")).parent
    fan_out.rmdir()  # removed by hand after the store was opened
    synced: list[Path] = []
    real = blob_store.fsync_directory
    monkeypatch.setattr(blob_store, "fsync_directory", lambda folder: (synced.append(folder), real(folder)))
    store.put(b"first")
    # The fan-out folder made again in the root, then the object in its folder.
    assert fan_out.parent == tmp_path and synced == [tmp_path, fan_out]
    synced.clear()
    blob_store.make_durable_parents(fan_out / ("0" * 64))
    assert synced == []  # folders already there: nothing to make durable


class _Killed(BaseException):
    """SIGKILL, as far as the writer's next line is concerned."""


@pytest.mark.parametrize("write", ["put", "put_chunks", "put_file", "batched"])
def test_a_write_again_after_a_kill_before_the_folder_fsync_makes_the_name_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """The first attempt renamed the object into place and was killed before its folder's fsync; the
    replay found the name, fsynced nothing, and its event named an object a power loss could take back."""
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"instance bytes"
    synced: list[Path] = []

    def killed(_folder: Path) -> None:
        raise _Killed

    def counted(folder: Path) -> None:
        synced.append(Path(folder))

    def attempt() -> str:
        if write == "put":
            return store.put(data)
        if write == "put_chunks":
            return store.put_chunks([data])[0]
        if write == "put_file":
            source = tmp_path / "received"
            source.write_bytes(data)
            return store.put_file(source)
        batch = BatchedBlobWrites(store)
        digest = batch.put_chunks([data])[0]
        batch.settle()
        return digest

    for module in (blob_store, batch_writes):
        monkeypatch.setattr(module, "fsync_directory", killed)
    with pytest.raises(_Killed):
        attempt()
    for module in (blob_store, batch_writes):
        monkeypatch.setattr(module, "fsync_directory", counted)
    digest = attempt()
    assert store.path_for(digest).parent in synced

"""The deid stage's batched blob writes: nothing is under its name before `settle`, everything is
after it, identical content is written once, and a failed settle leaves no temporary file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.deid.batch_writes import BatchedBlobWrites


def test_objects_appear_under_their_names_only_when_settled(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    writes = BatchedBlobWrites(store)
    written = [writes.put_chunks([b"head-%d" % n, memoryview(b"pixels" * 1000)]) for n in range(5)]

    assert writes.pending == 5
    assert not any(store.exists(sha) for sha, _ in written)
    writes.settle()

    assert writes.pending == 0
    for n, (sha, size) in enumerate(written):
        data = store.get(sha)  # checked against its hash
        assert data == b"head-%d" % n + b"pixels" * 1000 and len(data) == size
    assert not list(tmp_path.rglob(".tmp-*"))


def test_content_already_stored_is_not_written_again(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    sha = store.put(b"same bytes")
    os.utime(store.path_for(sha), (1, 1))
    writes = BatchedBlobWrites(store)

    assert writes.put_chunks([b"same ", b"bytes"]) == (sha, 10)
    assert writes.pending == 0
    assert store.path_for(sha).stat().st_mtime > 1  # refreshed for the lifecycle
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_failed_settle_raises_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)
    writes = BatchedBlobWrites(store)
    sha, _ = writes.put_chunks([b"x" * 100])

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        writes.settle()
    monkeypatch.undo()

    assert not store.exists(sha)
    assert not list(tmp_path.rglob(".tmp-*"))
    assert writes.pending == 0
    # The batch is read again and written again.
    assert writes.put_chunks([b"x" * 100])[0] == sha == hashlib.sha256(b"x" * 100).hexdigest()
    writes.settle()
    assert store.get(sha) == b"x" * 100


@pytest.mark.parametrize("levels", [1, 2])
def test_a_settled_object_s_new_folders_are_made_durable_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, levels: int
) -> None:
    from services.deid import batch_writes

    synced: list[str] = []
    real = batch_writes.fsync_directory
    monkeypatch.setattr(batch_writes, "fsync_directory", lambda folder: (synced.append(str(folder)), real(folder)))
    (tmp_path / ".layout").write_text(f"fan-out {levels}\n")  # 2: a store made before the one-level layout
    store = LocalBlobStore(tmp_path)
    if levels == 1:  # a one-level store makes its folders at opening: one removed, to see it made again
        store.path_for(hashlib.sha256(b"first").hexdigest()).parent.rmdir()
    writes = BatchedBlobWrites(store)
    first, _ = writes.put_chunks([b"first"])
    writes.settle()
    fan_out = store.path_for(first).parent
    # The new first level in the root, the new second level (if any) in the first, then the object in
    # its folder.
    new_levels = [str(tmp_path), str(fan_out.parent)] if levels == 2 else [str(tmp_path)]
    assert fan_out.parent == tmp_path if levels == 1 else fan_out.parent.parent == tmp_path
    assert synced == [*new_levels, str(fan_out)]

    synced.clear()
    second = hashlib.sha256(b"second").hexdigest()
    store.path_for(second).parent.mkdir(parents=True, exist_ok=True)
    assert writes.put_chunks([b"second"])[0] == second
    writes.settle()
    assert synced == [str(store.path_for(second).parent)]  # its folders were there: only its own
    assert store.get(first) == b"first" and store.get(second) == b"second"

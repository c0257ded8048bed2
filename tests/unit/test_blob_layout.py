"""Where a local blob store keeps its objects: one fan-out level for new stores, two kept for old ones."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from services.common.blob_layout import LAYOUT_FILE, UnknownBlobLayout, store_levels
from services.common.blob_lifecycle import collect, scan
from services.common.blob_store import LocalBlobStore

DAY = 24 * 3600.0
NOW = 1_800_000_000.0


def _old_layout_store(root: Path, contents: list[bytes]) -> list[str]:
    """Objects as a store made before the layout file wrote them: `ab/cd/<sha256>`, no `.layout`."""
    digests = []
    for content in contents:
        digest = hashlib.sha256(content).hexdigest()
        folder = root / digest[:2] / digest[2:4]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / digest).write_bytes(content)
        digests.append(digest)
    return digests


def test_a_new_store_keeps_objects_one_folder_deep_and_says_so_in_its_layout_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store.put(b"new object")
    assert store.path_for(digest) == tmp_path / digest[:2] / digest
    assert (tmp_path / LAYOUT_FILE).read_text() == "fan-out 1\n"
    assert LocalBlobStore(tmp_path).get(digest) == b"new object"  # any later process finds it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_store_made_before_the_layout_file_keeps_its_two_levels(tmp_path: Path) -> None:
    (old,) = _old_layout_store(tmp_path, [b"written by the previous version"])
    store = LocalBlobStore(tmp_path)
    assert store.levels == 2 and (tmp_path / LAYOUT_FILE).read_text() == "fan-out 2\n"
    assert store.get(old) == b"written by the previous version"
    new = store.put(b"written now")
    assert store.path_for(new) == tmp_path / new[:2] / new[2:4] / new
    assert {e.sha256 for e in scan(tmp_path)} == {old, new}


def test_the_first_process_decides_and_every_other_agrees(tmp_path: Path) -> None:
    found: list[int] = []
    start = threading.Barrier(8)

    def open_store() -> None:
        start.wait()
        found.append(store_levels(tmp_path))

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [1] * 8
    assert sorted(os.listdir(tmp_path)) == [LAYOUT_FILE]  # one file, no temporaries left
    # Objects written in two levels later (an older replica) do not change a store's mind.
    _old_layout_store(tmp_path, [b"late"])
    assert store_levels(tmp_path) == 1


def test_a_layout_this_version_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / LAYOUT_FILE).write_text("fan-out 3\n")
    with pytest.raises(UnknownBlobLayout, match="unknown blob store layout 'fan-out 3'"):
        LocalBlobStore(tmp_path)


def test_the_collection_finds_and_deletes_objects_of_either_layout(tmp_path: Path) -> None:
    # A one-level store into which an older replica also wrote in two levels: both are collected.
    store = LocalBlobStore(tmp_path)
    one_level = store.put(b"one level")
    (two_levels,) = _old_layout_store(tmp_path, [b"two levels"])
    spliced, _ = store.put_spliced(b"head-", memoryview(b"one level")[4:], one_level, 4)
    for path in (store.path_for(one_level), tmp_path / two_levels[:2] / two_levels[2:4] / two_levels):
        os.utime(path, (NOW - 10 * DAY, NOW - 10 * DAY))
    os.utime(store.splice_path_for(spliced), (NOW - 10 * DAY, NOW - 10 * DAY))
    assert {e.sha256 for e in scan(tmp_path)} == {one_level, two_levels, spliced}

    done = collect(tmp_path, set, retention_s=7 * DAY, clock=lambda: NOW)
    assert done.deleted == 3
    assert list(scan(tmp_path)) == []


def test_a_reader_without_write_access_still_finds_an_old_store_s_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common import blob_layout

    def refused(*_args: object) -> bool:
        raise PermissionError(13, "Permission denied")  # as a read-only volume or another user gets it

    (old,) = _old_layout_store(tmp_path, [b"old"])
    monkeypatch.setattr(blob_layout, "_write_marker_once", refused)
    assert LocalBlobStore(tmp_path).get(old) == b"old"
    assert not (tmp_path / LAYOUT_FILE).exists()

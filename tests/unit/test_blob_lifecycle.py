"""Which objects the blob lifecycle deletes: only those no partner is owed, past the retention."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from services.common.blob_lifecycle import BlobEntry, collect, deletable, scan, usage
from services.common.blob_store import LocalBlobStore, refreshed

DAY = 24 * 3600.0
NOW = 1_800_000_000.0


def _age(store: LocalBlobStore, sha: str, days: float) -> None:
    os.utime(store.path_for(sha), (NOW - days * DAY, NOW - days * DAY))


def test_only_expired_objects_nobody_is_owed_may_go() -> None:
    old, young = BlobEntry("a" * 64, 10, NOW - 8 * DAY), BlobEntry("b" * 64, 10, NOW - 1 * DAY)
    assert deletable(old, set(), NOW, 7 * DAY)
    assert not deletable(old, {"a" * 64}, NOW, 7 * DAY), "a partner has not stored it yet"
    assert not deletable(young, set(), NOW, 7 * DAY)
    assert usage([old, young], {"b" * 64}, NOW, 7 * DAY).__dict__ == {
        "objects": 2,
        "bytes": 20,
        "expired_objects": 1,
        "expired_bytes": 10,
        "owed_objects": 1,
        "owed_bytes": 10,
    }


def test_collect_deletes_expired_unowed_objects_and_keeps_the_rest(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    expired, owed, fresh = (store.put(bytes([n]) * 100) for n in range(3))
    _age(store, expired, 10)
    _age(store, owed, 10)
    _age(store, fresh, 1)
    (store.path_for(expired).parent / ".tmp-leftover").write_bytes(b"x")
    assert {e.sha256 for e in scan(tmp_path)} == {expired, owed, fresh}

    dry = collect(tmp_path, lambda: {owed}, retention_s=7 * DAY, dry_run=True, clock=lambda: NOW)
    assert (dry.deleted, dry.kept_owed) == (1, 1) and store.exists(expired)

    done = collect(tmp_path, lambda: {owed}, retention_s=7 * DAY, clock=lambda: NOW)
    assert (done.deleted, done.freed_bytes, done.kept_owed) == (1, 100, 1)
    assert not store.exists(expired) and store.exists(owed) and store.exists(fresh)


def test_content_written_again_is_fresh_again(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    sha = store.put(b"same content")
    _age(store, sha, 30)
    store.put(b"same content")  # re-received: in the pipeline once more
    assert collect(tmp_path, set, retention_s=7 * DAY).deleted == 0
    assert store.exists(sha)


def test_temporaries_left_by_dead_writers_go_and_live_writers_keep_theirs(tmp_path: Path) -> None:
    """A `.tmp-` file not written for an hour was left by a writer that died (in the root, where ingest
    receives, or beside an object, where the store renames); a younger one may still be written, by
    this process or another replica on the same volume, and stays. Neither is an object."""
    store = LocalBlobStore(tmp_path)
    sha = store.put(b"an object")
    _age(store, sha, 0)
    folder = store.path_for(sha).parent
    dead_received = tmp_path / ".tmp-c-store-1.dcm"
    dead_rename = folder / ".tmp-abc"
    live = tmp_path / ".tmp-c-store-2.dcm"
    for path, age_s in ((dead_received, 2 * 3600), (dead_rename, 3601), (live, 60)):
        path.write_bytes(b"x" * 10)
        os.utime(path, (NOW - age_s, NOW - age_s))
    (tmp_path / ".tmp-folder").mkdir()
    os.utime(tmp_path / ".tmp-folder", (NOW - DAY, NOW - DAY))

    dry = collect(tmp_path, set, dry_run=True, clock=lambda: NOW)
    assert (dry.temporaries, dry.temporary_bytes, dry.deleted) == (2, 20, 0)
    assert dead_received.exists() and dead_rename.exists()

    done = collect(tmp_path, set, clock=lambda: NOW)
    assert (done.temporaries, done.temporary_bytes, done.deleted) == (2, 20, 0)
    assert not dead_received.exists() and not dead_rename.exists()
    assert live.exists() and (tmp_path / ".tmp-folder").is_dir() and store.exists(sha)
    assert collect(tmp_path, set, clock=lambda: NOW).temporaries == 0


def test_content_written_again_while_it_is_being_collected_is_kept_or_written_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector checked an object's time, then deleted it: a writer refreshing it in between heard
    "stored", and the object was gone (a study re-sent after the retention; a splice's source)."""
    store = LocalBlobStore(tmp_path)
    before, after = store.put(b"refreshed before the rename"), store.put(b"refreshed after the rename")
    for sha in (before, after):  # against the real clock: the writer's refresh is "now"
        os.utime(store.path_for(sha), (time.time() - 30 * DAY,) * 2)
    rename, heard = os.rename, {}

    def writer_meanwhile(source: str | Path, target: str | Path) -> None:
        sha = Path(source).name
        if sha == before:
            heard[sha] = refreshed(source)  # the writer's refresh lands between the check and the claim
        rename(source, target)
        if sha == after:
            heard[sha] = refreshed(source)  # ...or just after it: gone, so written afresh
            if not heard[sha]:
                store.put(b"refreshed after the rename")

    monkeypatch.setattr(os, "rename", writer_meanwhile)
    result = collect(tmp_path, set, retention_s=7 * DAY)
    monkeypatch.undo()
    assert heard == {before: True, after: False}
    assert store.get(before) == b"refreshed before the rename" and store.get(after) == b"refreshed after the rename"
    assert result.deleted == 1  # the claimed copy of `after`, which its writer replaced
    assert not [p.name for p in tmp_path.rglob(".gc-*")]


def test_a_collection_killed_holding_an_object_is_settled_by_the_next(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    fresh, stale = store.put(b"refreshed before the kill"), store.put(b"expired")
    os.utime(store.path_for(stale), (time.time() - 30 * DAY,) * 2)
    for sha in (fresh, stale):
        path = store.path_for(sha)
        os.rename(path, path.with_name(f".gc-{sha}-0badc0de"))  # as _claim leaves them when killed
    collect(tmp_path, set, retention_s=7 * DAY)
    assert store.exists(fresh) and not store.exists(stale)
    assert not [p.name for p in tmp_path.rglob(".gc-*")]


def test_an_object_another_collection_deleted_during_the_scan_is_passed_over(tmp_path: Path) -> None:
    """Several delivery replicas collect: one's delete under another's scan ended that scan's whole run."""
    store = LocalBlobStore(tmp_path)
    seen: dict[str, bytes] = {}
    for n in range(10_000):  # two objects in one fan-out folder: listed together, stated one by one
        content = f"object {n}".encode()
        folder = hashlib.sha256(content).hexdigest()[:2]
        if folder in seen:
            break
        seen[folder] = content
    first, second = store.put(seen[folder]), store.put(content)
    listed = []
    for entry in scan(tmp_path):
        listed.append(entry.sha256)
        for other in {first, second} - set(listed):
            store.path_for(other).unlink(missing_ok=True)  # deleted meanwhile, by another replica
    assert len(listed) == 1

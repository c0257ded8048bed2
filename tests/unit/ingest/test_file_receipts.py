"""Receipts on the blob volume: an event is known as published once its link is written (with the
next group's claim), as a hard link that a second replica on the same volume sees."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.ingest import file_receipts
from services.ingest.file_receipts import FileReceiptStore, Pruned, prune_receipts
from services.ingest.receipts import Receipt, ReceiptStoreUnavailable, mark_id


def claim(store: FileReceiptStore, event_id: str) -> Receipt:
    return store.claim_many([event_id])[0]


def names(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_symlink())


def test_a_first_claim_is_new_and_its_mark_is_its_own(tmp_path: Path) -> None:
    receipt = claim(FileReceiptStore(tmp_path), "ev-1")

    assert not receipt.published
    assert receipt.mark == mark_id("ev-1")


def test_a_claim_before_the_mark_is_published_again(tmp_path: Path) -> None:
    store = FileReceiptStore(tmp_path)
    claim(store, "ev-1")  # acknowledged by the broker, then the process died: no mark

    again = claim(store, "ev-1")

    assert not again.published


def test_a_claim_after_the_mark_is_a_duplicate_and_marking_twice_is_harmless(tmp_path: Path) -> None:
    store = FileReceiptStore(tmp_path)
    claim(store, "ev-1")
    store.write_marks([mark_id("ev-1")])
    store.write_marks([mark_id("ev-1")])

    again = claim(store, "ev-1")

    assert again.published


def test_a_claim_writes_the_marks_it_carries_before_it_looks_up(tmp_path: Path) -> None:
    store = FileReceiptStore(tmp_path)
    earlier = store.claim_many(["ev-earlier-1", "ev-earlier-2"])

    group = store.claim_many(["ev-next", "ev-earlier-1", "ev-earlier-2"], [r.mark for r in earlier])

    assert [(r.event_id, r.published) for r in group] == [
        ("ev-next", False),
        ("ev-earlier-1", True),
        ("ev-earlier-2", True),
    ]


def test_every_mark_is_a_link_to_one_record_so_no_inode_per_instance(tmp_path: Path) -> None:
    store = FileReceiptStore(tmp_path)
    claimed = store.claim_many([f"ev-{n}" for n in range(20)])
    store.write_marks([r.mark for r in claimed])

    marks = [p for p in names(tmp_path) if "procs" not in p.parts]
    assert len(marks) == 20
    assert len({p.lstat().st_ino for p in names(tmp_path)}) == 1


def test_a_new_record_is_started_before_the_file_systems_link_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_receipts, "LINKS_PER_RECORD", 3)
    store = FileReceiptStore(tmp_path)

    store.write_marks([mark_id(f"ev-{n}") for n in range(7)])

    assert len({p.lstat().st_ino for p in names(tmp_path)}) == 3
    assert all(claim(store, f"ev-{n}").published for n in range(7))


def test_another_replica_on_the_same_volume_sees_the_marks(tmp_path: Path) -> None:
    first, second = FileReceiptStore(tmp_path), FileReceiptStore(tmp_path)
    claimed = claim(first, "ev-1")

    assert not claim(second, "ev-1").published
    first.write_marks([claimed.mark])
    assert claim(second, "ev-1").published


def test_a_record_removed_under_the_store_is_made_again(tmp_path: Path) -> None:
    store = FileReceiptStore(tmp_path)
    store.write_marks([mark_id("ev-1")])
    for record in (tmp_path / "procs").iterdir():
        record.unlink()  # a damaged volume

    store.write_marks([mark_id("ev-2")])

    assert claim(store, "ev-2").published


def test_a_volume_that_cannot_be_written_is_unavailable_and_says_no_path(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"")
    store = FileReceiptStore(blocked / ".receipts")

    with pytest.raises(ReceiptStoreUnavailable) as caught:
        store.claim_many(["ev-2"], [mark_id("ev-1")])

    assert str(caught.value) == "receipt store unavailable: ENOTDIR"


@pytest.mark.parametrize("event_id", ["../x", ".hidden", "a/b", ""])
def test_an_event_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, event_id: str) -> None:
    with pytest.raises(ValueError):
        claim(FileReceiptStore(tmp_path), event_id)


def test_claims_fsync_nothing_and_write_marks_makes_every_link_since_the_last_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    monkeypatch.setattr(file_receipts, "fsync_directory", synced.append)
    store = FileReceiptStore(tmp_path)

    store.claim_many(["bb-2"], [mark_id("aa-1")])
    store.claim_many(["cc-3"], [mark_id("bb-2")])
    assert synced == []  # no sender waits for the links' folders
    assert claim(FileReceiptStore(tmp_path), "aa-1").published  # written all the same
    store.write_marks([])  # at shutdown: every folder written into since the store opened
    assert {str(tmp_path / "aa"), str(tmp_path / "bb"), str(tmp_path / "procs")} <= set(synced)
    synced.clear()
    store.write_marks([])
    assert synced == []  # nothing written since


def test_a_record_takes_links_for_an_hour_at_most(tmp_path: Path) -> None:
    now = [0.0]
    store = FileReceiptStore(tmp_path, clock=lambda: now[0])
    store.write_marks([mark_id("ev-1"), mark_id("ev-2")])
    now[0] = file_receipts.RECORD_SPAN_S + 1
    store.write_marks([mark_id("ev-3")])

    inodes = {name.name: name.lstat().st_ino for name in names(tmp_path) if "procs" not in name.parts}
    assert inodes["ev-1"] == inodes["ev-2"] != inodes["ev-3"]
    assert len(list((tmp_path / "procs").iterdir())) == 2


def test_receipts_past_the_retention_go_a_record_at_a_time_and_the_rest_stay(tmp_path: Path) -> None:
    """Each record's age is its last link's (its ctime): an older record's names all go, a younger
    one's all stay. A name that went is published again when resent; the store keeps working after its
    own record went."""
    now = [0.0]
    store = FileReceiptStore(tmp_path, clock=lambda: now[0])
    store.write_marks([mark_id(f"old-{n}") for n in range(5)])
    time.sleep(0.05)  # the two records' ctimes apart
    now[0] = file_receipts.RECORD_SPAN_S + 1
    store.write_marks([mark_id(f"new-{n}") for n in range(3)])
    old_record, new_record = sorted((tmp_path / "procs").iterdir(), key=lambda p: p.lstat().st_ctime)
    between = (old_record.lstat().st_ctime + new_record.lstat().st_ctime) / 2
    pruned = prune_receipts(tmp_path, older_than_s=0.01, clock=lambda: between + 0.01)

    assert (pruned.records, pruned.names) == (1, 5)
    assert not old_record.exists() and new_record.is_symlink()
    assert not any(claim(store, f"old-{n}").published for n in range(5))
    assert all(claim(store, f"new-{n}").published for n in range(3))
    assert prune_receipts(tmp_path, older_than_s=0.01, clock=lambda: between + 0.01) == Pruned(0, 0)

    everything = prune_receipts(tmp_path, older_than_s=0, clock=lambda: time.time() + 1)
    assert everything == Pruned(1, 3) and names(tmp_path) == []
    store.write_marks([mark_id("after")])  # its record went: it makes another
    assert claim(store, "after").published


def test_pruning_a_volume_without_receipts_does_nothing(tmp_path: Path) -> None:
    assert prune_receipts(tmp_path / ".receipts", older_than_s=0) == Pruned(0, 0)

"""Retention (issue 8 item 6) on the real MongoDB-wire server: records past the retention age are purged
after a signed checkpoint, and the log still verifies afterwards, against its signed heads and a head
seen before the purge; tampering with what is kept, or with the checkpoint, is still caught."""

from __future__ import annotations

import threading

import pytest
from pymongo.database import Database

from services.audit.log_verify import KnownHead
from services.audit.retention import DAY_MS, CollectionRecordDeleter, Retention
from services.audit.signing import Signer
from services.audit.tamper_log import StoredTree
from tests.integration.audit.test_tamper_log import Clock, Log, kinds, make_records

DAY_S = DAY_MS / 1000


class FlakyDeleter(CollectionRecordDeleter):
    """Dies after `allowed` deletions, as a process killed half-way through a purge."""

    def __init__(self, log: Log, allowed: int) -> None:
        super().__init__(log.records)
        self.allowed = allowed
        self._lock = threading.Lock()  # the purge deletes from several threads

    def delete(self, record_id: str) -> bool:
        with self._lock:
            if self.allowed <= 0:
                raise ConnectionError("killed mid-purge")
            self.allowed -= 1
        return super().delete(record_id)


@pytest.fixture
def aged(db: Database) -> tuple[Log, Clock]:
    """20 records appended 30 days ago, 20 appended today."""
    clock = Clock()
    log = Log(db, Signer.generate(), clock)
    records = make_records(8)
    log.writer.open()
    log.store_and_append(records[:20])
    clock.now += 30 * DAY_S
    log.store_and_append(records[20:])
    log.writer.close()
    return log, clock


def retention(log: Log, clock: Clock, days: float = 7, deleter: CollectionRecordDeleter | None = None) -> Retention:
    return Retention(log.signer, StoredTree(log.docs), deleter or CollectionRecordDeleter(log.records), days,
                     clock=clock)  # fmt: skip


def test_a_purge_checkpoints_first_and_the_retained_suffix_still_verifies(aged: tuple[Log, Clock]) -> None:
    log, clock = aged
    before = StoredTree(log.docs).tree_head()
    assert before is not None and before.size == 40
    purged = [log.leaf(i)["id"] for i in range(20)]

    result = retention(log, clock).purge()

    assert (result.purged_to, result.deleted) == (20, 20)
    assert all(log.records.find_one({"_id": rid}) is None for rid in purged)
    assert all(log.docs.find_one({"_id": f"leafof:{rid}"}) is None for rid in purged)
    checkpoint = log.docs.find_one({"_id": "checkpoint:latest"})
    assert checkpoint is not None and checkpoint["purged_to"] == 20 and checkpoint["deleted_to"] == 20
    report = log.verify(KnownHead(before.size, before.root))
    assert report.ok, report.findings
    assert (report.purged_to, report.leaves_checked, report.tree_size) == (20, 20, 40)
    assert retention(log, clock).purge().deleted == 0  # nothing else is old enough


def test_after_a_purge_tampering_with_a_kept_record_is_still_named(aged: tuple[Log, Clock]) -> None:
    log, clock = aged
    retention(log, clock).purge()
    victim = log.leaf(25)["id"]
    log.records.update_one({"_id": victim}, {"$set": {"source_org": "trust-z"}})
    assert ("changed", 25, victim) in kinds(log.verify())


def test_a_forged_checkpoint_is_named(aged: tuple[Log, Clock]) -> None:
    """Someone purging more than they may, and moving the checkpoint to hide it, is caught."""
    log, clock = aged
    retention(log, clock).purge()
    log.docs.update_one({"_id": "checkpoint:latest"}, {"$set": {"purged_to": 24}})
    assert any(f.kind == "bad_checkpoint" for f in log.verify().findings)


def test_a_purge_interrupted_half_way_finishes_on_the_next_run(aged: tuple[Log, Clock]) -> None:
    log, clock = aged
    with pytest.raises(ConnectionError):
        retention(log, clock, deleter=FlakyDeleter(log, allowed=5)).purge()
    assert log.verify().ok  # the checkpoint was stored first: half-purged still verifies
    result = retention(log, clock).purge()
    assert result.deleted == 15 and result.purged_to == 20
    assert log.records.count_documents({}) == 20
    assert log.verify().ok


def test_only_signed_leaves_are_purged(db: Database) -> None:
    clock = Clock()
    log = Log(db, Signer.generate(), clock, sth_every=1000)
    log.writer.open()
    log.store_and_append(make_records(2), batch=10)  # signed at 10 (first head), 10 more unsigned
    clock.now += 30 * DAY_S
    assert retention(log, clock).purge().purged_to == 10
    assert log.verify().ok

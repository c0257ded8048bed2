"""The audit log's tamper evidence against the real MongoDB-wire server (FerretDB): each kind of
tampering with the stored records or the log is caught and named (leaf index, record id); a record
delivered twice is appended once; a second writer is refused; a crash half-way through a batch is
finished on the next start."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from pymongo.collection import Collection
from pymongo.database import Database

from services.audit import merkle
from services.audit.log_entries import PACKED, packed_form, stored_form
from services.audit.log_verify import CollectionRecords, KnownHead, VerifyReport, verify_log
from services.audit.records import AuditRecord
from services.audit.signing import Signer
from services.audit.tamper_log import (
    ConcurrentWriterError,
    StoredTree,
    TamperLog,
    TamperLogSink,
    chunk_entries,
    packed,
)
from services.common.topics import Topics
from tests.integration.audit.helpers import HeadFails
from tests.unit.audit.builders import journey_records

TOPICS = Topics("t-tl.")
NOW = datetime(2026, 2, 1, 12, 0, 0, tzinfo=UTC)


def make_records(instances: int) -> list[AuditRecord]:
    return journey_records(TOPICS, instances, "1.2.3", NOW)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Log:
    """A log over one test database, written the way the audit service writes it."""

    def __init__(self, db: Database, signer: Signer, clock: Clock, owner: str = "writer-1", sth_every: int = 7) -> None:
        self.records: Collection[dict[str, Any]] = db["audit_events"]
        self.docs: Collection[dict[str, Any]] = db["audit_log"]
        self.signer = signer
        self.writer = TamperLog(self.docs, signer, owner, sth_every=sth_every, sth_interval_s=3600, clock=clock)

    def store_and_append(self, records: list[AuditRecord], batch: int = 7) -> None:
        sink = TamperLogSink(self.writer)
        for at in range(0, len(records), batch):
            chunk = records[at : at + batch]
            new = [dict(r) for r in chunk if self.records.find_one({"_id": r["_id"]}) is None]
            if new:
                self.records.insert_many(new)
            sink.write(chunk)

    def verify(self, known: KnownHead | None = None) -> VerifyReport:
        return verify_log(StoredTree(self.docs), CollectionRecords(self.records), self.signer.public_key, known)

    def leaf(self, index: int) -> dict[str, Any]:
        leaf = StoredTree(self.docs).leaf(index)
        assert leaf is not None
        return leaf

    def entries(self) -> list[dict[str, Any]]:
        """The stored entries of the first 256 leaves (these tests' logs are shorter)."""
        doc = self.docs.find_one({"_id": "leaves:0"})
        assert doc is not None
        return chunk_entries(doc)

    def rewrite(self, entries: list[dict[str, Any]]) -> None:
        """What someone with write access to the database could do to the stored leaves."""
        self.docs.update_one({"_id": "leaves:0"}, {"$set": {"b": packed(entries), "n": len(entries)}})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(db: Database, clock: Clock) -> Iterator[Log]:
    log = Log(db, Signer.generate(), clock)
    log.writer.open()
    log.store_and_append(make_records(8))  # 40 records
    log.writer.close()
    yield log


def kinds(report: VerifyReport) -> list[tuple[str, int, str]]:
    return [(f.kind, f.leaf_index, f.record_id) for f in report.findings]


def test_an_untouched_log_verifies_with_every_tree_head(log: Log) -> None:
    report = log.verify()
    assert report.ok, report.findings
    assert report.tree_size == report.leaves_checked == 40
    assert report.latest is not None and report.latest.size == 40
    assert report.tree_heads_checked == len(StoredTree(log.docs).tree_heads()) >= 6


def test_the_stored_tree_serves_proofs_that_verify_against_the_signed_head(log: Log) -> None:
    tree = StoredTree(log.docs)
    head = tree.tree_head()
    assert head is not None
    for index in (0, 17, 39):
        leaf = bytes(log.leaf(index)["h"])
        proof = merkle.inclusion_proof(index, head.size, tree.range_hash)
        assert merkle.verify_inclusion(index, head.size, leaf, proof, head.root)
    old = tree.tree_head(14)
    assert old is not None
    proof = merkle.consistency_proof(14, head.size, tree.range_hash)
    assert merkle.verify_consistency(14, head.size, old.root, head.root, proof)


def test_a_record_delivered_again_is_not_appended_again(log: Log) -> None:
    again = make_records(8)[5:12]
    again = [{**r, "recorded_at": datetime(2026, 3, 1, tzinfo=UTC)} for r in again]  # type: ignore[misc]
    assert log.writer.append(again) == 0
    fresh = make_records(9)[40:]
    log.records.insert_many([dict(r) for r in fresh])
    assert log.writer.append([*fresh, *again]) == 5
    assert log.verify().ok


def test_a_changed_record_is_named(log: Log) -> None:
    victim = log.leaf(13)["id"]
    log.records.update_one({"_id": victim}, {"$set": {"partner_id": "someone-else"}})
    report = log.verify()
    assert ("changed", 13, victim) in kinds(report)
    assert any(f.kind == "tree_head_mismatch" for f in report.findings)


def test_a_field_removed_from_a_record_is_named(log: Log) -> None:
    victim = log.leaf(2)["id"]
    log.records.update_one({"_id": victim}, {"$unset": {"partner_id": ""}})
    assert ("changed", 2, victim) in kinds(log.verify())


def test_a_deleted_record_is_named(log: Log) -> None:
    victim = log.leaf(21)["id"]
    log.records.delete_one({"_id": victim})
    assert ("deleted", 21, victim) in kinds(log.verify())


def test_reordered_leaves_are_named(log: Log) -> None:
    entries = log.entries()
    entries[4], entries[30] = entries[30], entries[4]
    log.rewrite(entries)
    found = kinds(log.verify())
    assert ("reordered", 4, entries[30]["id"]) in found
    assert ("reordered", 30, entries[4]["id"]) in found
    assert len(found) == 2


def test_a_leaf_removed_from_the_log_is_named(log: Log) -> None:
    entries = log.entries()
    entries.pop(12)
    log.rewrite(entries)
    found = kinds(log.verify())
    assert ("leaf_missing", 12, "") in found
    assert not [k for k in found if k[0] == "reordered"]


def test_reordering_that_rewrites_the_leaf_hashes_too_is_caught_by_the_signed_heads(log: Log) -> None:
    """An attacker who swaps two records' positions and recomputes each moved leaf's own hash still
    cannot reproduce the signed roots: the finding names the span between two tree heads."""
    from services.audit.log_entries import leaf_entry

    entries = log.entries()
    a, b = entries[9], entries[10]
    for index, doc in ((9, b), (10, a)):
        entry = leaf_entry(index, doc["id"], bytes(doc["d"]), doc["f"], doc["t"])
        entries[index] = {**doc, "i": index, "h": merkle.leaf_hash(entry)}
    log.rewrite(entries)
    report = log.verify()
    mismatch = [f for f in report.findings if f.kind == "tree_head_mismatch"]
    assert mismatch and mismatch[0].leaf_index == 13 and "leaves 7..13" in mismatch[0].detail


def test_a_truncated_log_is_named(log: Log) -> None:
    """The last records and their leaves removed and the head moved back: the signed head says more."""
    for index in range(36, 40):
        log.records.delete_one({"_id": log.leaf(index)["id"]})
    log.rewrite(log.entries()[:36])
    log.docs.update_one({"_id": "head"}, {"$set": {"size": 36}})
    found = kinds(log.verify())
    assert ("truncated", 36, "") in found
    assert [k for k in found if k[0] == "truncated"] == [("truncated", 36, "")]  # once, not again by the walk
    assert any(f.kind == "truncated" and "leaves 36..39 are gone" in f.detail for f in log.verify().findings)


def test_a_known_head_claiming_an_enormous_log_is_answered_at_once(log: Log) -> None:
    """A caller's known size of 2^63 walked the missing leaves one read per 256 (operators may call
    VerifyAuditLog): the control server's workers span for ever."""
    started = time.monotonic()
    report = log.verify(KnownHead(2**63, b"\0" * 32))
    assert time.monotonic() - started < 10
    assert not report.ok and any(
        f.kind == "truncated" and f"..{2**63 - 1} are gone" in f.detail for f in report.findings
    )


def test_a_truncation_that_also_removes_the_later_tree_heads_is_caught_by_a_head_seen_before(log: Log) -> None:
    seen = StoredTree(log.docs).tree_head()
    assert seen is not None and seen.size == 40
    for index in range(35, 40):
        log.records.delete_one({"_id": log.leaf(index)["id"]})
    log.rewrite(log.entries()[:35])
    log.docs.update_one({"_id": "head"}, {"$set": {"size": 35}})
    log.docs.delete_one({"_id": "sth:40"})
    kept = log.docs.find_one({"_id": "sth:35"})
    assert kept is not None
    log.docs.replace_one({"_id": "sth:latest"}, {k: v for k, v in kept.items() if k != "_id"})
    assert log.verify().ok  # nothing inside the database betrays it...
    found = kinds(log.verify(KnownHead(seen.size, seen.root)))
    assert ("truncated", 35, "") in found  # ...the head the verifier kept does


def test_a_forged_tree_head_is_named(log: Log) -> None:
    log.docs.update_one({"_id": "sth:21"}, {"$set": {"root": b"\x00" * 32}})
    report = log.verify()
    assert any(f.kind == "bad_signature" and "size 21" in f.detail for f in report.findings)


def test_a_second_writer_is_refused_until_the_first_lets_go(db: Database, clock: Clock) -> None:
    signer = Signer.generate()
    first = Log(db, signer, clock, owner="writer-1")
    first.writer.open()
    first.store_and_append(make_records(1))
    second = Log(db, signer, clock, owner="writer-2")
    with pytest.raises(ConcurrentWriterError):
        second.writer.open()
    clock.now += 31  # the first writer stalls past its lease: the second may take over...
    second.writer.open()
    with pytest.raises(ConcurrentWriterError):  # ...and the first may not write again
        first.writer.append(make_records(2)[5:])
    second.store_and_append(make_records(2)[5:])
    second.writer.close()
    assert second.verify().ok and second.verify().tree_size == 10


def test_a_batch_interrupted_half_way_is_appended_by_the_replay(db: Database, clock: Clock) -> None:
    signer = Signer.generate()
    log = Log(db, signer, clock)
    log.writer.open()
    records = make_records(4)
    log.store_and_append(records[:10])

    def crash(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("the process died here")

    log.writer._write_leaves = crash  # type: ignore[method-assign]  # after the claims, before the leaves
    with pytest.raises(ConnectionError):
        log.store_and_append(records[10:15], batch=5)
    restarted = Log(db, signer, clock)
    clock.now += 31
    restarted.writer.open()
    assert restarted.writer.size == 10  # the head never moved: the claimed batch is not in the log...
    restarted.store_and_append(records[10:])  # ...until the bus's replay of it, once
    restarted.writer.close()
    report = restarted.verify()
    assert report.ok and report.tree_size == 20


def test_a_replay_in_another_composition_overwrites_what_a_dead_attempt_wrote(db: Database, clock: Clock) -> None:
    """Leaves, nodes and claims of an attempt that died before moving the head are the next one's to
    rewrite: the replay comes in other batches, and every record ends up in the log exactly once."""
    signer = Signer.generate()
    log = Log(db, signer, clock, sth_every=1000)
    log.writer.open()
    records = make_records(120)  # 600 records: the dead attempt completes nodes of 256 leaves
    log.store_and_append(records[:200], batch=200)
    log.writer._docs = HeadFails(log.docs)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        log.store_and_append(records[200:520], batch=320)
    assert log.docs.find_one({"_id": "node:8:1"}) is not None  # leaves 256..511, of the dead attempt
    restarted = Log(db, signer, clock, sth_every=1000)
    clock.now += 31
    restarted.writer.open()
    assert restarted.writer.size == 200
    restarted.store_and_append(records[300:600], batch=300)  # the replay, other batches, other order
    restarted.store_and_append(records[200:300], batch=100)
    restarted.store_and_append(records[250:350], batch=100)  # already in: nothing is added
    restarted.writer.close()
    report = restarted.verify()
    assert report.ok and report.tree_size == 600
    ids = [restarted.leaf(i)["id"] for i in range(600)]
    assert sorted(ids) == sorted(r["_id"] for r in records)


def test_a_log_spanning_several_leaves_documents_proves_and_verifies(db: Database, clock: Clock) -> None:
    """Past 256 leaves, subtrees are stored as nodes and the leaves in several documents."""
    log = Log(db, Signer.generate(), clock, sth_every=150)
    log.writer.open()
    log.store_and_append(make_records(140), batch=200)  # 700 records
    log.writer.close()
    tree = StoredTree(log.docs)
    head = tree.tree_head()
    assert head is not None and head.size == 700
    assert log.docs.find_one({"_id": "node:9:0"}) is not None and log.docs.find_one({"_id": "leaves:2"}) is not None
    assert head.root == merkle.ListTree([bytes(log.leaf(i)["h"]) for i in range(700)]).root()
    for index in (0, 255, 256, 511, 699):
        proof = merkle.inclusion_proof(index, 700, tree.range_hash)
        assert merkle.verify_inclusion(index, 700, bytes(log.leaf(index)["h"]), proof, head.root)
    report = log.verify()
    assert report.ok and report.tree_heads_checked == len(tree.tree_heads()) >= 4
    victim = log.leaf(300)["id"]
    log.records.update_one({"_id": victim}, {"$set": {"route_id": "elsewhere"}})
    assert ("changed", 300, victim) in kinds(log.verify())


def test_a_value_added_to_a_field_a_stored_record_left_out_is_caught(db: Database, clock: Clock) -> None:
    """The store keeps records without their empty fields (log_entries.stored_form); the leaf covers the
    fields with values, and any other field given a value afterwards is a change too."""
    log = Log(db, Signer.generate(), clock)
    log.writer.open()
    records = make_records(2)
    log.records.insert_many([stored_form(r) for r in records])
    TamperLogSink(log.writer).write(records)
    assert log.verify().ok
    victim = next(r["_id"] for r in records if r["reason"] is None)
    log.records.update_one({"_id": victim}, {"$set": {"reason": "made-up"}})
    assert ("changed", next(i for i in range(10) if log.leaf(i)["id"] == victim), victim) in kinds(log.verify())


def test_leaves_stored_as_an_array_by_an_older_version_are_read_and_extended(log: Log) -> None:
    """`leaves` documents hold their entries packed in one field (`b`); one written before holds an array
    (`e`): it is read as it is, and the next batch extends it, packing what it held unchanged."""
    entries = log.entries()
    log.docs.update_one({"_id": "leaves:0"}, {"$set": {"e": entries}, "$unset": {"b": ""}})
    assert log.verify().ok
    log.writer.open()
    log.store_and_append(make_records(10)[40:])
    log.writer.close()
    doc = log.docs.find_one({"_id": "leaves:0"})
    assert doc is not None and "e" not in doc and doc["n"] == 50
    assert chunk_entries(doc)[:40] == entries
    report = log.verify()
    assert report.ok, report.findings
    assert report.tree_size == 50


def test_records_stored_packed_verify_and_every_edit_of_one_is_caught(db: Database, clock: Clock) -> None:
    """The store keeps a record's fields packed in one binary field (log_entries.packed_form): the leaf
    covers the fields as unpacked, so one edited inside the packed bytes, a field set beside them with
    or without a packed value, and the packed bytes dropped or garbled are all `changed`."""
    log = Log(db, Signer.generate(), clock)
    log.writer.open()
    records = make_records(6)
    log.records.insert_many([packed_form(r) for r in records])
    TamperLogSink(log.writer).write(records)
    assert log.verify().ok
    index = {log.leaf(i)["id"]: i for i in range(len(records))}
    victims = iter(records)

    def edited(update: Callable[[AuditRecord], dict[str, Any]]) -> None:
        victim = next(victims)
        log.records.update_one({"_id": victim["_id"]}, update(victim))
        assert ("changed", index[victim["_id"]], victim["_id"]) in kinds(log.verify())

    def inner(r: AuditRecord, **changed: Any) -> bytes:
        return bson.encode({**{k: v for k, v in stored_form(r).items() if k != "_id"}, **changed})

    edited(lambda r: {"$set": {PACKED: inner(r, partner_id="someone-else")}})
    edited(lambda r: {"$set": {"event_type": "made-up"}})  # beside its packed value
    # A field without a value, given one beside the packed ones:
    edited(lambda r: {"$set": {next(k for k, v in r.items() if v is None): "made-up"}})
    edited(lambda r: {"$set": {PACKED: b"\x05\x00\x00"}})
    edited(lambda r: {"$unset": {PACKED: ""}})

"""The access log's background appender against the real MongoDB-wire server (FerretDB): an entry stored
by a process that crashed before appending it is in the log after the next start, appended once, and
once appended `imx audit verify`'s check names it deleted or changed."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from services.audit.access_appender import RUNS, BackgroundAccessLog, run_tail_id
from services.audit.access_log import AccessEntry, MongoAccessLog
from services.audit.log_sources import LoggedDocuments
from services.audit.log_verify import VerifyReport, verify_log
from services.audit.signing import Signer
from services.audit.tamper_log import CHUNK, StoredTree, TamperLog

OWNER = "audit-1"  # a restarted process on the same host takes its own lease back at once


def _entry(n: int) -> AccessEntry:
    return AccessEntry(analyst_id=f"a{n}", scope="all", method="GET", path="/audit/events", params={}, status=200)


def _process(db: Database[dict[str, Any]], signer: Signer) -> BackgroundAccessLog:
    """What the audit service builds at each start (services/audit/evidence.py), without its thread."""
    tamper_log = TamperLog(db["audit_log"], signer, OWNER, sth_every=1, sth_interval_s=3600)
    access = db["audit_events_access"]
    return BackgroundAccessLog(MongoAccessLog(access), access, db["audit_log"], tamper_log)


def _leaf_ids(db: Database[dict[str, Any]]) -> list[str]:
    tree = StoredTree(db["audit_log"])
    return [str(e["id"]) for chunk in range(tree.size() // CHUNK + 1) for e in tree.chunk(chunk)]


def _verify(db: Database[dict[str, Any]], signer: Signer) -> VerifyReport:
    docs = LoggedDocuments(db["audit_events"], db["audit_events_access"], db["control_changes"])
    return verify_log(StoredTree(db["audit_log"]), docs, signer.public_key)


def test_entries_stored_before_a_crash_are_appended_at_the_next_start_and_then_verified(
    client: MongoClient[dict[str, Any]], unique_name: str
) -> None:
    db, signer = client[unique_name], Signer.generate()
    first = _process(db, signer)
    first.record(_entry(0))
    first.flush()  # appended
    for n in range(1, 4):
        first.record(_entry(n))  # stored, answered; the process dies before its appender's next turn
    stored = sorted(str(d["_id"]) for d in db["audit_events_access"].find({}, {"_id": 1}))
    assert len(stored) == 4 and len(_leaf_ids(db)) == 1

    second = _process(db, signer)
    assert second.flush() == 0  # its own queue is empty; the recovery appended the first run's three
    assert sorted(_leaf_ids(db)) == [f"access:{i}" for i in stored]  # each once
    runs = db["audit_log"].find_one({"_id": RUNS}) or {}
    assert first.run not in runs.get("runs", []) and db["audit_log"].find_one({"_id": run_tail_id(first.run)}) is None
    assert _verify(db, signer).ok

    second.record(_entry(4))
    second.close()  # a clean stop appends what is left and unlists the run
    assert len(_leaf_ids(db)) == 5
    assert second.run not in (db["audit_log"].find_one({"_id": RUNS}) or {}).get("runs", [])

    deleted, edited = stored[2], stored[3]
    db["audit_events_access"].delete_one({"_id": deleted})
    db["audit_events_access"].update_one({"_id": edited}, {"$set": {"status": 500}})
    report = _verify(db, signer)
    named = {(f.kind, f.record_id) for f in report.findings if f.record_id}  # and the heads it no longer matches
    assert named == {("deleted", f"access:{deleted}"), ("changed", f"access:{edited}")}


def test_a_recovery_repeated_after_a_crash_half_way_appends_nothing_twice(
    client: MongoClient[dict[str, Any]], unique_name: str
) -> None:
    db, signer = client[unique_name], Signer.generate()
    first = _process(db, signer)
    for n in range(3):
        first.record(_entry(n))
    first.flush()
    # the crash came after the append and before its marker: the marker is still as the reservation wrote it
    db["audit_log"].update_one({"_id": run_tail_id(first.run)}, {"$set": {"appended": 0, "since": 0}})
    second = _process(db, signer)
    assert second.recover() == 0  # found again, and in the log from `since` on: not appended twice
    assert len(_leaf_ids(db)) == 3
    assert _verify(db, signer).ok

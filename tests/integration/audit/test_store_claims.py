"""The record store's insert is the tamper-evident log's claim (tamper_log.StoreClaims), against the real
MongoDB-wire server: the audit consumer's batches write no `leafof:` document per record, and still every
record ends up in the log exactly once, through replays in other compositions, an attempt that died after
storing and before the head moved, and records stored (and claimed) by the version before."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.collection import Collection
from pymongo.database import Database

from services.audit.evidence import LoggedWriter
from services.audit.log_verify import CollectionRecords, verify_log
from services.audit.records import AuditRecord
from services.audit.signing import Signer
from services.audit.store import MongoAuditStore
from services.audit.tamper_log import LOG_SINCE, StoredTree, TamperLog, TamperLogSink
from services.common.topics import Topics
from tests.integration.audit.helpers import HeadFails
from tests.unit.audit.builders import journey_records

TOPICS = Topics("t-sc.")
LEASE_S = 0.01
NOW = datetime(2026, 2, 1, 12, 0, 0, tzinfo=UTC)


def make_records(instances: int) -> list[AuditRecord]:
    return journey_records(TOPICS, instances, "1.2.4", NOW)


class Service:
    """The store and the log as the audit service wires them (services/audit/main.py)."""

    def __init__(self, db: Database, signer: Signer, owner: str) -> None:
        self.store = MongoAuditStore(db["audit_events"])
        self.store.ensure_indexes()
        self.docs: Collection[dict[str, Any]] = db["audit_log"]
        self.log = TamperLog(self.docs, signer, owner, sth_every=1000, sth_interval_s=3600, lease_s=LEASE_S)
        self.writer = LoggedWriter(self.store, self.log)
        self.signer = signer

    def write(self, records: list[AuditRecord], batch: int) -> None:
        for at in range(0, len(records), batch):
            self.writer.insert(records[at : at + batch])

    def logged_ids(self) -> list[str]:
        tree = StoredTree(self.docs)
        return [str(tree.leaf(i)["id"]) for i in range(tree.size())]  # type: ignore[index]


def _claims(docs: Collection[dict[str, Any]]) -> int:
    return sum(1 for _ in docs.find({"_id": {"$regex": "^leafof:"}}, {"_id": 1}))


def test_every_record_is_logged_once_without_a_claim_document_per_record(db: Database) -> None:
    signer = Signer.generate()
    service = Service(db, signer, "writer-1")
    records = make_records(80)  # 400 records
    service.write(records[:150], batch=50)
    assert service.store.log_since(str(records[60]["_id"])) == 50  # the log's size before its batch
    assert _claims(service.docs) == 0

    service.log._docs = HeadFails(service.docs)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        service.write(records[150:300], batch=150)  # stored, leaves written, the head never moved
    assert service.store.log_since(str(records[200]["_id"])) == 150

    # writer-1 died holding the log's lease (no close): its successor starts once the lease has lapsed,
    # as a restarted service does. Without the wait, a quick database answers within the 10 ms lease.
    time.sleep(2 * LEASE_S)
    restarted = Service(db, signer, "writer-2")
    restarted.write(records[250:400], batch=75)  # the replay, in another composition
    restarted.write(records[100:260], batch=80)  # partly logged already, partly stored but not logged
    restarted.log.close()
    ids = restarted.logged_ids()
    assert sorted(ids) == sorted(str(r["_id"]) for r in records)
    assert _claims(restarted.docs) == 0
    report = verify_log(StoredTree(restarted.docs), CollectionRecords(db["audit_events"]), signer.public_key)
    assert report.ok and report.tree_size == 400, report.findings


def test_records_stored_by_the_version_before_are_recognised_by_their_claims(db: Database) -> None:
    signer = Signer.generate()
    records = make_records(20)  # 100 records
    older = Service(db, signer, "writer-1")
    older.store.insert(records[:60])  # as before: no LOG_SINCE in the records, a claim per record
    TamperLogSink(older.log).write(records[:60])
    older.log.close()
    assert db["audit_events"].find_one({LOG_SINCE: {"$exists": True}}) is None
    assert _claims(older.docs) == 60

    newer = Service(db, signer, "writer-2")
    newer.write(records[40:100], batch=30)
    newer.log.close()
    assert sorted(newer.logged_ids()) == sorted(str(r["_id"]) for r in records)
    assert _claims(newer.docs) == 60
    report = verify_log(StoredTree(newer.docs), CollectionRecords(db["audit_events"]), signer.public_key)
    assert report.ok, report.findings

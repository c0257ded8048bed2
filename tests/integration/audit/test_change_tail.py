"""Control-plane changes reach the tamper-evident log from `control_changes` (log_sources.ChangeTail),
against the real MongoDB-wire server: each change is appended once, also across a restart of the writer
(which reads the last minute again), and verification names a change deleted or edited afterwards."""

from __future__ import annotations

from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database

from services.audit.log_sources import ChangeTail, LoggedDocuments
from services.audit.log_verify import verify_log
from services.audit.signing import Signer
from services.audit.tamper_log import StoredTree, TamperLog
from services.common.control_changes import (
    CHANGES_COLLECTION,
    SECURITY_ALERT,
    SECURITY_CONFIGURATION,
    ChangeRecord,
    MongoChangeLog,
)


def change(n: int) -> ChangeRecord:
    return ChangeRecord(
        who="ops", role="admin", service="audit", method="/imx.v1.AnalystAdmin/AddAnalyst",
        object_kind="analyst", object_id=f"analyst-{n}", before="", after=f"sha256:{n:016x}", outcome="OK",
        event_id=SECURITY_ALERT, event_type=SECURITY_CONFIGURATION,
    )  # fmt: skip


class Writer:
    def __init__(self, db: Database, signer: Signer, owner: str) -> None:
        self.docs: Collection[dict[str, Any]] = db["audit_log"]
        self.log = TamperLog(self.docs, signer, owner, sth_every=1, sth_interval_s=3600, lease_s=0.01)
        self.tail = ChangeTail(db[CHANGES_COLLECTION], self.docs, self.log)


def test_changes_are_appended_once_across_a_restart_and_tampering_is_named(db: Database) -> None:
    changes = MongoChangeLog(db)
    for n in range(3):
        changes.record(change(n))
    signer = Signer.generate()
    first = Writer(db, signer, "writer-1")
    assert first.tail.poll() == 3
    assert first.tail.poll() == 0
    first.log.close()

    restarted = Writer(db, signer, "writer-2")
    restarted.tail.poll()  # reads the last minute again: its claims keep it from appending twice
    assert restarted.log.size == 3
    changes.record(change(3))
    assert restarted.tail.poll() == 1 and restarted.log.size == 4
    restarted.log.close()

    stored = db[CHANGES_COLLECTION]
    source = LoggedDocuments(db["audit_events"], db["audit_events_access"], stored)
    report = verify_log(StoredTree(restarted.docs), source, signer.public_key)
    assert report.ok and report.leaves_checked == 4, report.findings
    ids = sorted(str(d["_id"]) for d in stored.find({}, {"_id": 1}))
    stored.delete_one({"_id": ids[1]})
    stored.update_one({"_id": ids[3]}, {"$set": {"before": "sha256:0"}})
    found = {(f.kind, f.record_id) for f in verify_log(StoredTree(restarted.docs), source, signer.public_key).findings}
    assert ("deleted", f"change:{ids[1]}") in found
    assert ("changed", f"change:{ids[3]}") in found

"""Retention of the keyed documents (issue 8 item 6) on the real MongoDB-wire server: after a purge, the
trails, event pages, counters, marks and journals of purged days hold nothing of the purged records, a
study straddling the horizon keeps its recent events, the tamper-evident log still verifies, a period
wholly before the horizon is refused as purged, and running the purge again (or after a run killed
half-way) changes nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.collection import Collection
from pymongo.database import Database

from services.audit import keyed_retention
from services.audit.keyed_retention import KeyedPurge, journal_days
from services.audit.log_verify import CollectionRecords, verify_log
from services.audit.queries import EventFilter, PeriodPurged
from services.audit.records import AuditRecord, build_record, to_datetime
from services.audit.retention import DAY_MS, CollectionRecordDeleter, Retention
from services.audit.signing import Signer
from services.audit.store import MongoAuditStore
from services.audit.tamper_log import StoredTree, TamperLog, TamperLogSink
from services.common.topics import Topics
from tests.integration.audit.test_tamper_log import Clock
from tests.unit.audit.builders import Instance, incoming, journey

TOPICS = Topics("t-kr.")
OLD_S = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NEW_S = OLD_S + 30 * DAY_MS / 1000
OLD_DAY, NEW_DAY = "2027-01-15", "2027-02-14"
STRADDLING = "1.2.9.1"


def records_at(t_s: float, studies: list[str], sop_tag: str) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    for n, study in enumerate(studies):
        instance = Instance(study=study, series=f"{study}.1", sop=f"{study}.1.{sop_tag}")
        for offset, message in enumerate(journey(TOPICS, instance, t0_ms=int(t_s * 1000) + n * 1000)):
            out.append(build_record(incoming(message, offset=offset), TOPICS, to_datetime(int(t_s * 1000))))
    return out


class Audit:
    """The store and the tamper-evident log over one test database, written as the service writes them."""

    def __init__(self, db: Database) -> None:
        self.clock = Clock(OLD_S)
        self.records: Collection[dict[str, Any]] = db["audit_events"]
        self.docs: Collection[dict[str, Any]] = db["audit_log"]
        self.store = MongoAuditStore(self.records)
        self.store.ensure_indexes()
        self.signer = Signer.generate()
        self.log = TamperLog(self.docs, self.signer, "writer-1", sth_every=5, sth_interval_s=3600, clock=self.clock)
        self.db = db

    def write(self, records: list[AuditRecord], batch: int = 6) -> None:
        sink = TamperLogSink(self.log)
        self.log.open()
        for at in range(0, len(records), batch):
            self.store.insert(records[at : at + batch])
            sink.write(records[at : at + batch])
        self.log.close()

    def retention(self, deleter: CollectionRecordDeleter | None = None) -> Retention:
        deleter = deleter or CollectionRecordDeleter(self.records, self.db["audit_events_marks"])
        return Retention(self.signer, StoredTree(self.docs), deleter, 7, clock=self.clock,
                         keyed=KeyedPurge(self.records))  # fmt: skip

    def verify_ok(self) -> bool:
        report = verify_log(StoredTree(self.docs), CollectionRecords(self.records), self.signer.public_key)
        return report.ok

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        names = ["audit_events", *(f"audit_events_{n}" for n in ("pages", "marks", "counts")), "audit_log"]
        return {n: sorted(self.db[n].find({}), key=lambda d: str(d["_id"])) for n in names}

    def ids(self, collection: str, pattern: str) -> list[str]:
        return sorted(str(d["_id"]) for d in self.db[collection].find({"_id": {"$regex": pattern}}, {"_id": 1}))


@pytest.fixture
def audit(db: Database) -> Audit:
    """Three studies 30 days ago, one of which (STRADDLING) gets another instance today, plus a new study."""
    audit = Audit(db)
    old = records_at(OLD_S, ["1.2.9.0", STRADDLING, "1.2.9.2"], "1")
    audit.write(old)
    audit.clock.now = NEW_S
    audit.write(records_at(NEW_S, [STRADDLING, "1.2.9.3"], "2"))
    return audit


def test_a_purge_removes_what_purged_records_left_in_pages_counters_marks_and_journals(audit: Audit) -> None:
    store = audit.store
    assert store.study_trail("1.2.9.0")
    assert audit.ids("audit_events_counts", f"^x:{OLD_DAY}$") and audit.ids("audit_events_marks", f":{OLD_DAY}:")
    straddling_before = {r["_id"] for r in store.study_trail(STRADDLING)}

    audit.retention().purge()

    assert audit.records.count_documents({"occurred_at": {"$lt": datetime(2027, 2, 1, tzinfo=UTC)}}) == 0
    assert store.study_trail("1.2.9.0") == [] and store.study_trail("1.2.9.2") == []
    kept = store.study_trail(STRADDLING)
    assert kept and all(r["occurred_at"] >= datetime(2027, 2, 14, tzinfo=UTC) for r in kept)
    assert {r["_id"] for r in kept} < straddling_before
    # Nothing of the old day is left in the keyed documents.
    assert audit.ids("audit_events_pages", "^m:") and all(
        int(i[2:].split("#")[0]) >= OLD_S * 1000 + DAY_MS for i in audit.ids("audit_events_pages", "^m:")
    )
    assert not audit.ids("audit_events_counts", OLD_DAY)
    # Month documents keep no figures of the purged day (emptied, kept: a running store may move them again).
    months = list(audit.db["audit_events_counts"].find({"_id": {"$regex": "^vm:.*2027-01"}}))
    assert months and not [name for m in months for name in m if name[:1].isdigit()]
    assert not audit.ids("audit_events_marks", OLD_DAY) and not audit.ids("audit_events_marks", "^jd:")
    old_hour = int(OLD_S * 1000) // 3_600_000 * 3_600_000
    assert not audit.ids("audit_events_marks", f"^t[dhm]:{old_hour}$")
    journals = list(audit.db["audit_events_counts"].find({"_id": {"$regex": "^j:"}}))
    assert journals and all(min(journal_days(j)) >= NEW_DAY for j in journals)
    # What is kept still answers: the new day's counters and its event pages.
    assert audit.ids("audit_events_counts", f"^x:{NEW_DAY}$")
    page = store.events(EventFilter(since=datetime(2027, 1, 1, tzinfo=UTC)), 1000)
    assert page.records and all(r["occurred_at"] >= datetime(2027, 2, 14, tzinfo=UTC) for r in page.records)
    assert audit.verify_ok()


def test_a_period_wholly_before_the_horizon_is_refused_as_purged(audit: Audit) -> None:
    audit.retention().purge()
    old = datetime(2027, 1, 15, tzinfo=UTC)
    with pytest.raises(PeriodPurged) as refused:
        audit.store.events(EventFilter(since=old, until=old + timedelta(minutes=5)), 100)
    assert refused.value.retained_from == "2027-02-07"  # the cutoff's day: empty days go too
    for ask in (
        lambda: audit.store.summary(old, old + timedelta(days=1)),
        lambda: audit.store.volumes("org", old, old + timedelta(days=1), "trust-a"),
        lambda: audit.store.turnaround(old, old + timedelta(days=1)),
        lambda: audit.store.stage_reasons(old, old + timedelta(days=1)),
    ):
        with pytest.raises(PeriodPurged):
            ask()
    straddling = audit.store.summary(old, None)
    assert straddling.events_by_type  # the retained days' figures


def test_running_the_purge_again_changes_nothing(audit: Audit) -> None:
    audit.retention().purge()
    before = audit.snapshot()
    audit.retention().purge()
    assert audit.snapshot() == before
    assert audit.verify_ok()


def _killed_before_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: Any) -> list[str]:
        raise ConnectionError("killed mid-purge")

    monkeypatch.setattr(keyed_retention, "counter_ids", killed)  # after the chains and marks, before counters


def _killed_while_deleting_minute_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each minute chain loses its last page, then the run dies (a rerun must still find the rest)."""

    def killed(self: KeyedPurge, key: str, length: int) -> None:
        self._pages.delete_one({"_id": f"{key}#{length - 1}"})
        raise ConnectionError("killed mid-purge")

    monkeypatch.setattr(KeyedPurge, "_delete_chain", killed)


@pytest.mark.parametrize("kill", [_killed_before_counters, _killed_while_deleting_minute_pages])
def test_a_keyed_purge_killed_half_way_is_finished_by_the_next_run(
    audit: Audit, monkeypatch: pytest.MonkeyPatch, kill: Callable[[pytest.MonkeyPatch], None]
) -> None:
    reference = Audit(audit.db.client[audit.db.name + "r"])
    try:
        reference.write(records_at(OLD_S, ["1.2.9.0", STRADDLING, "1.2.9.2"], "1"))
        reference.clock.now = NEW_S
        reference.write(records_at(NEW_S, [STRADDLING, "1.2.9.3"], "2"))
        reference.retention().purge()

        kill(monkeypatch)
        with pytest.raises(ConnectionError):
            audit.retention().purge()
        assert audit.verify_ok()
        monkeypatch.undo()
        audit.retention().purge()
        assert strip(audit.snapshot()) == strip(reference.snapshot())
    finally:
        audit.db.client.drop_database(audit.db.name + "r")


def strip(snapshot: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The keyed documents' ids (signatures and keys differ between the two databases)."""
    return {
        name: [str(d["_id"]) for d in docs if not re.match(r"^(sth|checkpoint|lease|head|node)", str(d["_id"]))]
        for name, docs in snapshot.items()
        if name != "audit_log"
    }


def test_a_day_with_a_record_still_kept_keeps_its_marks_and_counts_a_duplicate_once(db: Database) -> None:
    """A late event of an old day, appended recently, is still in N: its day keeps its counters, marks
    and journals, so the event delivered again is not counted a second time."""
    audit = Audit(db)
    audit.write(records_at(OLD_S, ["1.2.9.0"], "1"))
    audit.clock.now = NEW_S
    late = records_at(OLD_S + 60, ["1.2.9.5"], "1")
    audit.write(late)
    counts_before = audit.db["audit_events_counts"].find_one({"_id": f"x:{OLD_DAY}"})

    audit.retention().purge()

    assert audit.db["audit_events_counts"].find_one({"_id": "retained"}) is None  # the old day waits
    assert audit.ids("audit_events_marks", f":{OLD_DAY}:1.2.9.5$")
    assert audit.store.study_trail("1.2.9.5") and audit.store.study_trail("1.2.9.0") == []
    assert audit.store.insert(late) == 0  # delivered again
    counts = audit.db["audit_events_counts"].find_one({"_id": f"x:{OLD_DAY}"})
    assert counts is not None and counts_before is not None and counts["t"] == counts_before["t"]
    assert audit.verify_ok()


def test_a_key_counted_again_in_a_month_whose_only_days_were_purged_is_counted(db: Database) -> None:
    """With a retention shorter than a month, a purge emptied the key's month document and deleted it; the
    running store, knowing it existed, moved it with guarded updates that matched nothing, and the key's
    later days of that month answered nothing (`volumes?by=org&key=`)."""
    audit = Audit(db)
    audit.write(records_at(OLD_S, ["1.2.8.0"], "1"))
    audit.clock.now = OLD_S + 10 * DAY_MS / 1000  # 2027-01-25, seven days kept
    audit.retention().purge()
    assert not audit.ids("audit_events_counts", f"^x:{OLD_DAY}$"), "the old day is purged"
    audit.write(records_at(audit.clock.now, ["1.2.8.1"], "2"))  # the same organisation, the same month
    since, until = datetime(2027, 1, 24, tzinfo=UTC), datetime(2027, 1, 26, tzinfo=UTC)
    by_key = [(v.day, v.key, v.instances) for v in audit.store.volumes("org", since, until, "trust-a")]
    assert by_key == [("2027-01-25", "trust-a", 1)]


def test_a_day_read_a_few_records_at_a_time_is_purged_as_one_read_whole(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge holds a group of minutes' records at a time, never a whole day (at 120 instances/s,
    ~60 million records): over many small groups it leaves exactly what one group of the whole day does."""
    reference = Audit(db.client[db.name + "r"])
    audit = Audit(db)
    try:
        for each in (reference, audit):
            for minute in range(7):  # seven minutes of the old day, a study each
                each.clock.now = OLD_S + minute * 60
                each.write(records_at(OLD_S + minute * 60, [f"1.2.7.{minute}"], "1"))
            each.clock.now = NEW_S
            each.write(records_at(NEW_S, ["1.2.7.0", "1.2.7.9"], "2"))
        monkeypatch.setattr(keyed_retention, "RECORDS_AT_ONCE", 10_000_000)
        reference.retention().purge()
        monkeypatch.setattr(keyed_retention, "RECORDS_AT_ONCE", 3)  # under one minute's records
        audit.retention().purge()

        assert strip(audit.snapshot()) == strip(reference.snapshot())
        assert not audit.ids("audit_events_counts", OLD_DAY) and not audit.ids("audit_events_marks", OLD_DAY)
        assert audit.store.study_trail("1.2.7.3") == [] and audit.store.study_trail("1.2.7.0")
        assert audit.verify_ok()
    finally:
        db.client.drop_database(db.name + "r")


def test_a_dense_minute_is_held_a_few_pages_at_a_time(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 120 instances/s one minute is ~43,000 records on hundreds of pages: the purge holds about
    RECORDS_AT_ONCE records and one round of pages, never the minute (nor the day) at once."""
    audit = Audit(db)
    audit.write(records_at(OLD_S, [f"1.2.6.{n}" for n in range(12)], "1"))  # 60 records, 10 pages, one minute
    audit.clock.now = NEW_S
    audit.write(records_at(NEW_S, ["1.2.6.99"], "2"))
    monkeypatch.setattr(keyed_retention, "RECORDS_AT_ONCE", 5)
    monkeypatch.setattr(keyed_retention, "PAGES_AT_ONCE", 2)
    held: list[int] = []
    reading = KeyedPurge._records_by_pages

    def counted(self: KeyedPurge, *args: Any) -> Any:
        for records in reading(self, *args):
            held.append(len(records))
            yield records

    monkeypatch.setattr(KeyedPurge, "_records_by_pages", counted)
    audit.retention().purge()

    assert not audit.ids("audit_events_pages", f"^m:{int(OLD_S * 1000) // 60_000 * 60_000}#")
    assert not audit.ids("audit_events_counts", OLD_DAY) and audit.store.study_trail("1.2.6.3") == []
    assert held and max(held) <= 5 + 2 * 6, held  # a group, and the last round's two pages of six
    assert sum(held) == 60, "every record read, once: what the purge needs of them is gathered then"

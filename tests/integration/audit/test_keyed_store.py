"""The keyed audit store on the real MongoDB-wire server: every record counted once however batches are
replayed or split, a batch that died half-way finished by the next, trails and event pages read from
page chains that hold repeats, and nothing but identifiers in the pages."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import MongoClient

from services.audit import rollups
from services.audit import store as store_module
from services.audit.counters import batch_id
from services.audit.queries import EventFilter
from services.audit.records import AuditRecord, build_record, to_datetime
from services.audit.store import MongoAuditStore
from services.common.topics import Topics
from tests.unit.audit.builders import PHI_DESCRIPTION, T0_MS, Instance, incoming, journey, quarantined

TOPICS = Topics("t-k.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
DAY = "2026-01-01"


@pytest.fixture
def client(mongo_uri: str, unique_name: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        yield client
    finally:
        client.drop_database(unique_name)
        client.close()


@pytest.fixture
def store(client: MongoClient, unique_name: str) -> MongoAuditStore:
    store = MongoAuditStore(client[unique_name]["audit_events"])
    store.ensure_indexes()
    return store


def _instances(n: int, study: str = "1.2.826.0.1.3680043.10.5") -> list[Instance]:
    return [Instance(study=study, series=f"{study}.1", sop=f"{study}.1.{i}") for i in range(n)]


def _records(instances: list[Instance], spacing_ms: int = 0, **kwargs: object) -> list[AuditRecord]:
    messages = [m for i, x in enumerate(instances) for m in journey(TOPICS, x, t0_ms=T0_MS + i * spacing_ms, **kwargs)]
    return [build_record(incoming(m), TOPICS, NOW) for m in messages]


def _org_instances(store: MongoAuditStore) -> int:
    return sum(r.instances for r in store.volumes("org", None, None, "trust-a"))


def test_replays_in_any_composition_count_each_record_once(store: MongoAuditStore) -> None:
    records = _records(_instances(10))
    assert store.insert(records[:30]) == 30
    assert store.insert(records[:30]) == 0, "the same batch again"
    assert store.insert(records[20:]) == 20, "a replay split differently"
    assert _org_instances(store) == 10
    [org] = store.volumes("org", None, None, "trust-a")
    assert (org.studies, org.bytes) == (1, 100)
    assert store.summary().events_by_type == {k: 10 for k in ("ingested", "routed", "prepared", "outcome", "receipt")}
    assert len(store.study_trail(Instance(study="1.2.826.0.1.3680043.10.5").study)) == 50


def test_records_of_a_batch_that_died_before_its_journal_are_counted_by_the_next(store: MongoAuditStore) -> None:
    records = _records(_instances(4))
    dead = batch_id(r["_id"] for r in records[:10])
    store._counters.claim(dead, store._records, [dict(r) for r in records[:10]])  # then the process died
    assert store.insert(records) == 10, "ten were stored by the dead batch"
    assert _org_instances(store) == 4
    assert store.insert(records) == 0 and _org_instances(store) == 4


def test_a_journal_left_half_applied_is_finished_once(store: MongoAuditStore) -> None:
    records = _records(_instances(3))
    first = records[:5]
    bid = batch_id(r["_id"] for r in first)
    _new, ours = store._counters.claim(bid, store._records, [dict(r) for r in first])
    deltas = rollups.deltas_for([r for r in first if r["_id"] in ours], [])
    store._counters.record(bid, deltas)
    half = dict(list(deltas.items())[:1])
    store._counters.apply(bid, half)  # died after the first counter
    store._counts.update_one({"_id": f"j:{bid}"}, {"$set": {"applied": False}})
    store.insert(records)  # meets the dead batch's records: finishes its journal, counts the rest
    store.insert(records[::2])
    assert store.summary().events_by_type == {k: 3 for k in ("ingested", "routed", "prepared", "outcome", "receipt")}
    assert _org_instances(store) == 3


def test_event_pages_walk_minutes_hours_and_days_once_each(
    store: MongoAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instances 7 hours apart: most minutes, hours and some days between them are empty.
    records = _records(_instances(12), spacing_ms=7 * 3_600_000)
    for i in range(0, len(records), 7):
        store.insert(records[i : i + 7])
    store.insert(records[3:12])  # a replay in another composition: repeated pages
    monkeypatch.setattr(store_module, "SCAN_READS", 40)  # pages may end short; the cursor goes on
    seen, after, pages = [], None, 0
    while True:
        page = store.events(EventFilter(), limit=4, after=after)
        seen.extend(page.records)
        pages += 1
        after = page.next_cursor
        if after is None:
            break
    keys = [(r["occurred_at"], r["_id"]) for r in seen]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == len(records)
    window = store.events(
        EventFilter(
            event_type=None, since=to_datetime(T0_MS + 7 * 3_600_000), until=to_datetime(T0_MS + 7 * 3_600_000 + 30)
        ),
        limit=10,
    )
    assert [r["event_type"] for r in window.records] == ["ingested", "routed", "prepared"]
    assert window.next_cursor is None
    partial = store.summary(since=to_datetime(T0_MS + 7 * 3_600_000))
    assert partial.events_by_type["ingested"] == 11, "an edge day is counted from its pages"


def test_trail_reads_chains_with_repeats_and_follows_deidentified_copies(store: MongoAuditStore) -> None:
    study = Instance()
    messages = [
        *journey(TOPICS, study),
        *journey(TOPICS, study, partner="care-b", deidentified=False, t0_ms=T0_MS + 1000),
    ]
    records = [build_record(incoming(m), TOPICS, NOW) for m in messages]
    store.insert(records[:4])
    store.insert(records[2:])
    store.insert(records)
    trail = store.study_trail(study.study)
    assert len(trail) == len({r["_id"] for r in records}) == 9
    copy = store.study_trail(study.remapped().study)
    assert {r["partner_id"] for r in copy} == {"research-a"} and len(copy) == 3
    assert store.study_trail("9.9.9") == []


def test_aggregates_answer_per_partner_day_and_reason(store: MongoAuditStore) -> None:
    store.insert(_records(_instances(5), spacing_ms=1000))
    store.insert([build_record(incoming(quarantined(TOPICS, Instance(sop="1.9"), T0_MS)), TOPICS, NOW)])
    [t] = store.turnaround(None, None, "research-a")
    assert sum(t.histogram.values()) == 5 and list(t.by_day) == [DAY]
    [partner] = store.volumes("partner", None, None)
    assert (partner.key, partner.instances, partner.delivered) == ("research-a", 5, 5)
    [reason] = store.stage_reasons(None, None)
    assert (reason.kind, reason.stage, reason.reason, reason.count) == ("quarantined", "routing", "no-route", 1)
    later = datetime(2026, 3, 1, tzinfo=UTC)
    assert store.volumes("org", later, later + timedelta(days=30)) == []


def test_pages_hold_identifiers_only(store: MongoAuditStore) -> None:
    store.insert(_records(_instances(2)))
    for doc in store._pages.find():
        assert PHI_DESCRIPTION.encode() not in zlib.decompress(doc["b"])

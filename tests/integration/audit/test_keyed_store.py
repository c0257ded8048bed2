"""The keyed audit store on the real MongoDB-wire server: every record counted once however batches are
replayed or split, a batch that died half-way finished by the next, trails and event pages read from
page chains that hold repeats, and nothing but identifiers in the pages."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient

from services.audit import pages as pages_module
from services.audit import rollups
from services.audit import store as store_module
from services.audit.counters import batch_id
from services.audit.queries import EventFilter
from services.audit.records import AuditRecord, build_record, to_datetime
from services.audit.scopes import Scope, ScopeDenied
from services.audit.store import MongoAuditStore
from services.audit.trail import build_trail, events_json, trail_json
from services.common.topics import Topics
from tests.unit.audit.builders import PHI_DESCRIPTION, T0_MS, Instance, incoming, journey, quarantined
from tests.unit.audit.test_pages import bson_page

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


def _chain_keys_read(store: MongoAuditStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The page-chain keys the store reads from now on, in the order it asks for them."""
    asked: list[str] = []
    read_many = store._chains.read_many

    def counting(keys: list[str], first_round: int = 3) -> dict[str, list[AuditRecord]]:
        asked.extend(keys)
        return read_many(keys, first_round)

    monkeypatch.setattr(store._chains, "read_many", counting)
    return asked


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


def test_a_page_reads_only_the_minutes_an_hour_lists(store: MongoAuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tm:<hour>` lists the minutes with pages: a page of a sparse hour asks for those, not all 60."""
    records = _records(_instances(3), spacing_ms=20 * 60_000)  # minutes 0, 20 and 40 of one hour
    store.insert(records[:9])
    store.insert(records[6:])
    asked = _chain_keys_read(store, monkeypatch)
    since = to_datetime(T0_MS)
    page = store.events(EventFilter(since=since, until=since + timedelta(hours=1)), limit=100)
    assert len(page.records) == len({r["_id"] for r in records}) and page.next_cursor is None
    assert sorted(asked) == sorted(f"m:{T0_MS + i * 20 * 60_000}" for i in range(3))


def test_a_month_of_one_key_is_read_from_its_month_document(
    store: MongoAuditStore, client: MongoClient, unique_name: str
) -> None:
    store.insert(_records(_instances(4), spacing_ms=86_400_000))  # four days of January
    month = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 31, tzinfo=UTC))
    rows = store.volumes("org", *month, "trust-a")
    assert [(r.day, r.instances, r.studies) for r in rows] == [(f"2026-01-0{d}", 1, 1) for d in range(1, 5)]
    counts = client[unique_name]["audit_events_counts"]
    assert counts.find_one({"_id": "vm:org:2026-01:trust-a"}) is not None
    assert store.volumes("partner", *month, "research-a") == rollups.volumes(
        counts.find_one, "partner", list(rollups.days_between(month[0].date(), datetime(2026, 1, 30).date())),
        "research-a",
    )  # fmt: skip
    # A store that counted before month documents existed reads its earlier days from the daily ones.
    counts.delete_one({"_id": "vm:org:2026-01:trust-a"})
    counts.update_one({"_id": store_module.MONTHLY_FROM}, {"$set": {"from": "2026-01-03"}})
    older = MongoAuditStore(client[unique_name]["audit_events"])
    assert [r.day for r in older.volumes("org", *month, "trust-a")] == ["2026-01-01", "2026-01-02"]


def test_a_scoped_summary_counts_only_what_the_scope_sees(
    store: MongoAuditStore, client: MongoClient, unique_name: str
) -> None:
    mine_records = _records(_instances(3), spacing_ms=1000)  # trust-a to research-a
    store.insert(mine_records)
    other = [Instance(study="1.2.3.4", series="1.2.3.4.1", sop=f"1.2.3.4.1.{i}") for i in range(2)]
    store.insert(_records(other, spacing_ms=1000, org="trust-z", partner="ai-c"))
    store.insert([build_record(incoming(quarantined(TOPICS, Instance(sop="1.9"), T0_MS)), TOPICS, NOW)])
    mine = store.summary(scope=Scope.parse("org:trust-a"))
    assert mine.delivered_by_partner == {"research-a": 3} and mine.quarantined_by_reason == {"no-route": 1}
    theirs = store.summary(scope=Scope.parse("partner:ai-c"))
    assert theirs.delivered_by_partner == {"ai-c": 2} and theirs.events_by_type["outcome"] == 2
    since = to_datetime(T0_MS + 1500)
    edge = store.summary(since=since, scope=Scope.parse("org:trust-a"))
    later = [r for r in mine_records if r["event_type"] == "outcome" and r["occurred_at"] >= since]
    assert 0 < len(later) < 3 and edge.delivered_by_partner == {"research-a": len(later)}, "edge day: from pages"
    assert store.stage_reasons(None, None, Scope.parse("org:trust-z")) == []
    # Before scoped counts were kept the answer would be short: refused instead.
    client[unique_name]["audit_events_counts"].update_one(
        {"_id": store_module.MONTHLY_FROM}, {"$set": {"from": "2026-01-02"}}
    )
    with pytest.raises(ScopeDenied):
        MongoAuditStore(client[unique_name]["audit_events"]).summary(scope=Scope.parse("org:trust-a"))


def test_chains_of_bson_pages_written_before_are_read_with_the_json_pages_after(
    store: MongoAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that wrote BSON pages (no `f`), then this version: a replay of an old batch adds nothing,
    one in another composition adds JSON pages that repeat records, and readers keep one copy of each."""
    study = Instance()
    records = [
        build_record(incoming(m), TOPICS, NOW)
        for i, x in enumerate([study, Instance(sop=f"{study.sop}.2")])
        for m in journey(TOPICS, x, t0_ms=T0_MS + i * 61_000)  # two minutes
    ]
    monkeypatch.setattr(pages_module, "pack", lambda part, lines=None: bson_page(part))
    store.insert(records[:6])
    monkeypatch.undo()
    old = {d["_id"] for d in store._pages.find({}, {"_id": 1})}
    store = MongoAuditStore(store._records)  # the new version starts: it knows no chain's length
    store.insert(records[:6])  # the same batch again: its pages are there (same record-id hash)
    assert {d["_id"] for d in store._pages.find({}, {"_id": 1})} == old
    store.insert(records[4:])  # a replay in another composition: JSON pages repeating records 4 and 5
    formats = {d["_id"]: d.get("f") for d in store._pages.find({}, {"f": 1})}
    assert {f for i, f in formats.items() if i in old} == {None}
    assert {f for i, f in formats.items() if i not in old} == {pages_module.JSON_LINES}
    trail = store.study_trail(study.study)
    assert sorted(trail, key=lambda r: r["_id"]) == sorted(records, key=lambda r: r["_id"])
    expected = build_trail(study.study, records)
    assert expected is not None and trail_json(study.study, trail) == expected.model_dump_json().encode()
    page = store.events(EventFilter(), limit=100)
    assert sorted(r["_id"] for r in page.records) == sorted(r["_id"] for r in records)
    assert events_json(page.records) == events_json(sorted(records, key=lambda r: (r["occurred_at"], r["_id"])))


def test_a_busy_minute_answers_a_page_before_later_minutes_are_read(
    store: MongoAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records(_instances(8), spacing_ms=60_000)  # five records in each of eight minutes
    store.insert(records)
    asked = _chain_keys_read(store, monkeypatch)
    since = to_datetime(T0_MS)
    page = store.events(EventFilter(since=since, until=since + timedelta(hours=1)), limit=8)
    assert len(page.records) == 8 and page.next_cursor is not None
    assert asked == [f"m:{T0_MS + i * 60_000}" for i in range(store_module.LISTED_AT_FIRST)]


def test_a_copys_chain_is_read_alongside_the_studys_own(
    store: MongoAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy's chain is asked for as soon as the study's first page names it, not after the study's
    chain has ended, nor after the study's first round of reads."""
    instances = _instances(8)
    records = _records(instances)
    for i in range(8):  # one page per instance in each chain (study, copy, minute)
        store.insert(records[i * 5 : i * 5 + 5])
    asked: list[str] = []
    readers = store._chains._readers

    class Recording:
        def submit(self, fn: Any, page_id: str) -> Any:
            asked.append(page_id)
            return readers.submit(fn, page_id)

    monkeypatch.setattr(store._chains, "_readers", Recording())
    trail = store.study_trail(instances[0].study)
    assert sorted(r["_id"] for r in trail) == sorted(r["_id"] for r in records)
    study = f"s:{instances[0].study}"
    copy = sorted({i.rsplit("#", 1)[0] for i in asked} - {study})
    assert len(copy) == 1
    # study 0-5; copy 0-3 (named by the study's page 0); then, as pages come in, two asked for past the
    # last one found of each chain: each chain's end (#8) costs two misses, not a round of twelve.
    study_at, copy_at = (lambda *ns: [f"{study}#{n}" for n in ns]), (lambda *ns: [f"{copy[0]}#{n}" for n in ns])
    assert asked == [
        *study_at(0, 1, 2, 3, 4, 5),
        *copy_at(0, 1, 2, 3),
        *study_at(6, 7),
        *copy_at(4, 5),
        *study_at(8, 9),
        *copy_at(6, 7, 8, 9),
    ]

"""MongoAuditStore against the real MongoDB-wire server (FerretDB): idempotent inserts, queries, summary."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

from services.audit.queries import EventFilter
from services.audit.records import AuditRecord, EventType, build_record, to_datetime
from services.audit.store import MongoAuditStore
from services.common.messages import TransientError
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, dead_letter, incoming, journey, quarantined

TOPICS = Topics("t-s.")
NOW = datetime(2026, 2, 1, 12, 0, 0, 123456, tzinfo=UTC)
STUDY = Instance()
OTHER = Instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1")


@pytest.fixture
def store(mongo_uri: str, unique_name: str) -> Iterator[MongoAuditStore]:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        store = MongoAuditStore(client[unique_name]["audit_events"])
        store.ensure_indexes()
        yield store
    finally:
        client.drop_database(unique_name)
        client.close()


def _records() -> list[AuditRecord]:
    messages = [
        *journey(TOPICS, STUDY),
        *journey(TOPICS, STUDY, partner="care-b", deidentified=False, t0_ms=T0_MS + 1000, delivered=False),
        quarantined(TOPICS, Instance(sop=STUDY.sop + "9"), T0_MS + 2000),
        *journey(TOPICS, OTHER, org="trust-z", partner="ai-c", t0_ms=T0_MS + 3000),
    ]
    records = [build_record(incoming(m), TOPICS, NOW) for m in messages]
    letter = dead_letter(TOPICS, journey(TOPICS, STUDY)[2])
    return [*records, build_record(incoming(letter, timestamp_ms=T0_MS + 4000), TOPICS, NOW)]


def test_inserting_twice_stores_each_record_once(store: MongoAuditStore) -> None:
    records = _records()
    assert store.insert(records) == len(records) - 1, "the second journey's ingested event is the same event"
    assert store.insert(records) == 0
    assert store.insert([*records[:3], build_record(incoming(quarantined(TOPICS, OTHER, T0_MS)), TOPICS, NOW)]) == 1
    assert store.insert([]) == 0


def test_records_come_back_exactly_as_written(store: MongoAuditStore) -> None:
    records = _records()
    store.insert(records)
    trail = {r["_id"]: r for r in store.study_trail(STUDY.study)}
    for record in records:
        if record["_id"] in trail and record["event_type"] != "ingested":
            assert trail[record["_id"]] == record
    assert all(r["recorded_at"].tzinfo is not None for r in trail.values())


def test_trail_follows_the_deidentified_copy_and_leaves_other_studies_out(store: MongoAuditStore) -> None:
    store.insert(_records())
    kinds = sorted(r["event_type"] for r in store.study_trail(STUDY.study))
    assert kinds == sorted(
        [
            "ingested",
            "routed",
            "prepared",
            "outcome",
            "receipt",
            "routed",
            "prepared",
            "outcome",
            "receipt",
            "quarantined",
            "dead_letter",
        ]
    )
    copy = store.study_trail(STUDY.remapped().study)
    assert {r["partner_id"] for r in copy} == {"research-a"}
    assert store.study_trail("9.9.9") == []


def test_paging_visits_every_matching_event_once_in_time_order(store: MongoAuditStore) -> None:
    records = _records()
    store.insert(records)
    seen, after = [], None
    while True:
        page = store.events(EventFilter(), limit=3, after=after)
        seen.extend(page.records)
        after = page.next_cursor
        if after is None:
            break
    keys = [(r["occurred_at"], r["_id"]) for r in seen]
    assert keys == sorted(keys) and len(set(keys)) == len(records) - 1
    by_partner = store.events(EventFilter(partner="care-b", event_type=EventType.OUTCOME), limit=10)
    assert [r["status"] for r in by_partner.records] == ["failed"] and by_partner.next_cursor is None
    window = store.events(
        EventFilter(org="trust-z", since=to_datetime(T0_MS + 3000), until=to_datetime(T0_MS + 3020)), limit=10
    )
    assert [r["event_type"] for r in window.records] == ["ingested", "routed"]


def test_a_since_long_before_the_first_event_pages_from_the_first_day_recorded(store: MongoAuditStore) -> None:
    """Each page's reads covered ~400 empty days from `since`: year 1 took ~1,850 empty pages, and the
    analysts' page showed an empty download with "more events follow"."""
    records = _records()
    store.insert(records)
    page = store.events(EventFilter(since=datetime(2000, 1, 1, tzinfo=UTC)), limit=1000)
    assert len(page.records) == len(records) - 1 and page.next_cursor is None


def test_summary_counts_deliveries_quarantines_and_dead_letters(store: MongoAuditStore) -> None:
    store.insert(_records())
    summary = store.summary()
    assert summary.delivered_by_partner == {"ai-c": 1, "research-a": 1}
    assert summary.failed_by_partner == {"care-b": 1}
    assert summary.quarantined_by_reason == {"no-route": 1}
    assert summary.dead_letters_by_stage == {"deid": 1}
    assert summary.events_by_type["outcome"] == 3 and summary.events_by_type["ingested"] == 2
    assert store.summary(since=to_datetime(T0_MS + 3000)).delivered_by_partner == {"ai-c": 1}
    assert store.ping()


class _AwayOnce:
    """A collection whose first call of `method` meets the database away."""

    def __init__(self, collection: Any, method: str) -> None:
        self._collection = collection
        self._method = method
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._collection, name)
        if name != self._method or self.failed:
            return real

        def away(*_args: Any, **_kwargs: Any) -> Any:
            self.failed = True
            raise AutoReconnect("connection reset")

        return away


def test_a_batch_retried_after_the_database_failed_part_way_is_listed(store: MongoAuditStore) -> None:
    """The day's and hour's marks were taken as written before they were: the retry skipped them, and the
    records, stored and counted, were never listed by /audit/events."""
    marks = _AwayOnce(store._marks, "update_one")
    store._marks = marks  # type: ignore[assignment]
    records = _records()
    with pytest.raises(TransientError):
        store.insert(records)
    assert marks.failed
    store.insert(records)  # the bus reads the batch again
    listed = store.events(EventFilter(), 100)
    assert {r["_id"] for r in listed.records} == {r["_id"] for r in records} and listed.next_cursor is None


def test_a_stages_replay_of_an_event_at_a_later_time_is_listed_once(store: MongoAuditStore) -> None:
    """After a crash a stage publishes its events again, same ids, later times: the copy's minute page was
    written too, and /audit/events (and the exports) listed each such event twice."""
    first = [build_record(incoming(m), TOPICS, NOW) for m in journey(TOPICS, STUDY)]
    replay = [build_record(incoming(m), TOPICS, NOW) for m in journey(TOPICS, STUDY, t0_ms=T0_MS + 5 * 60_000)]
    assert [r["_id"] for r in first] == [r["_id"] for r in replay]
    assert [r["occurred_at"] for r in first] != [r["occurred_at"] for r in replay]
    store.insert(first)
    assert store.insert(replay) == 0
    listed = [r["_id"] for r in store.events(EventFilter(), 100).records]
    assert sorted(listed) == sorted(r["_id"] for r in first)
    assert [r["occurred_at"] for r in store.study_trail(STUDY.study)] == [r["occurred_at"] for r in first]


def test_a_batch_retried_in_the_same_process_adds_no_pages(store: MongoAuditStore) -> None:
    """A batch whose pages were written and whose later step failed (the syslog repository away) is read
    again every second: each retry appended the same pages again, a study's trail growing with them."""
    records = _records()
    store.insert(records)
    pages = store._pages.count_documents({})
    for _ in range(3):
        store.insert(records)
    assert store._pages.count_documents({}) == pages


def test_a_batch_whose_page_number_was_taken_and_whose_retry_follows_a_failure_is_paged(
    store: MongoAuditStore,
) -> None:
    """A page number already taken (another writer, or every chain's first after a restart) is settled by
    reading it; that read failing, the retried batch skipped the chain as written and its records were
    listed nowhere."""
    other = MongoAuditStore(store._records)  # another writer (or this one before a restart)
    earlier = [build_record(incoming(quarantined(TOPICS, Instance(sop=STUDY.sop + "7"), T0_MS)), TOPICS, NOW)]
    other.insert(earlier)  # takes page 0 of the study's chain
    records = [build_record(incoming(m), TOPICS, NOW) for m in journey(TOPICS, STUDY)]
    chains = store._chains
    chains._pages = _AwayOnce(chains._pages, "find_one")  # type: ignore[assignment]
    with pytest.raises(TransientError):
        store.insert(records)
    store.insert(records)
    assert {r["_id"] for r in store.study_trail(STUDY.study)} == {r["_id"] for r in [*earlier, *records]}

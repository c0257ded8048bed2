"""The MongoDB receipt store against the MongoDB-wire server: the same contract as the in-memory one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from services.ingest.receipts import (
    COLLECTION,
    LEGACY_PUBLISHED_COLLECTION,
    MongoReceiptStore,
    ReceiptFacts,
    ReceiptStatus,
)

FACTS = ReceiptFacts("trust-a", "c-store", "1.2.3.4", "ab" * 32, 1234)


@pytest.fixture
def db(mongo_uri: str, make_name: Callable[[str], str]) -> Iterator[Database]:
    client: MongoClient = MongoClient(mongo_uri)
    name = make_name("receipts")
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


def test_a_first_claim_creates_a_received_receipt(db: Database) -> None:
    receipt = MongoReceiptStore(db).claim("ev-1", FACTS, 1000)

    assert receipt.new and receipt.status is ReceiptStatus.RECEIVED and receipt.received_at_ms == 1000


def test_a_claim_before_the_mark_finds_the_first_attempt_unpublished_with_its_time(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-1", FACTS, 1000)

    again = store.claim("ev-1", FACTS, 2000)

    assert not again.new and again.status is ReceiptStatus.RECEIVED and again.received_at_ms == 1000


def test_a_claim_after_the_mark_finds_it_published(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-1", FACTS, 1000)
    store.mark_published("ev-1", 1500)

    again = store.claim("ev-1", FACTS, 2000)

    assert not again.new and again.status is ReceiptStatus.PUBLISHED and again.received_at_ms == 1000


def test_marking_twice_is_harmless(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-1", FACTS, 1000)
    store.mark_published("ev-1", 1500)
    store.mark_published("ev-1", 1600)

    assert store.claim("ev-1", FACTS, 2000).status is ReceiptStatus.PUBLISHED


def test_a_receipt_published_in_place_by_an_earlier_version_is_still_published(db: Database) -> None:
    db[COLLECTION].insert_one({"_id": "ev-old", "status": "published", "received_at_ms": 900})

    receipt = MongoReceiptStore(db).claim("ev-old", FACTS, 2000)

    assert receipt.status is ReceiptStatus.PUBLISHED and receipt.received_at_ms == 900


def test_a_group_is_claimed_and_marked_in_one_write_each_and_resends_in_it_find_their_receipts(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-published", FACTS, 1000)
    store.mark_published("ev-published", 1100)
    store.claim("ev-unfinished", FACTS, 1200)

    group = store.claim_many([("ev-new", FACTS), ("ev-published", FACTS), ("ev-unfinished", FACTS)], 2000)

    assert [(r.event_id, r.status, r.received_at_ms, r.new) for r in group] == [
        ("ev-new", ReceiptStatus.RECEIVED, 2000, True),
        ("ev-published", ReceiptStatus.PUBLISHED, 1000, False),
        ("ev-unfinished", ReceiptStatus.RECEIVED, 1200, False),
    ]
    store.mark_published_many(["ev-new", "ev-unfinished", "ev-published"], 2100)
    assert all(store.claim(e, FACTS, 3000).status is ReceiptStatus.PUBLISHED for e in ("ev-new", "ev-unfinished"))


def test_a_mark_in_the_collection_earlier_versions_wrote_still_counts(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-old", FACTS, 900)
    db[LEGACY_PUBLISHED_COLLECTION].insert_one({"_id": "ev-old", "published_at_ms": 950})

    assert store.claim("ev-old", FACTS, 2000).status is ReceiptStatus.PUBLISHED


def test_a_claim_marks_earlier_events_published_in_the_same_write(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-earlier", FACTS, 1000)

    group = store.claim_many([("ev-next", FACTS), ("ev-earlier", FACTS)], 2000, published=["ev-earlier"])

    assert [(r.event_id, r.status, r.new) for r in group] == [
        ("ev-next", ReceiptStatus.RECEIVED, True),
        ("ev-earlier", ReceiptStatus.PUBLISHED, False),
    ]
    store.claim_many([("ev-other", FACTS)], 3000, published=["ev-earlier"])  # a mark written twice: no error
    assert db[COLLECTION].find_one({"_id": "published:ev-earlier"}) == {
        "_id": "published:ev-earlier",
        "published_at_ms": 2000,
    }

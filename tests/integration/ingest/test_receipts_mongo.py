"""The MongoDB receipt store against the MongoDB-wire server: the same contract as the in-memory one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from services.ingest.receipts import (
    COLLECTION,
    GROUP_MARK_PREFIX,
    LEGACY_PUBLISHED_COLLECTION,
    MongoReceiptStore,
    ReceiptFacts,
    ReceiptStatus,
    mark_id,
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
    # The new receipt's mark is its group's; a receipt claimed again has a mark of its own.
    assert group[0].mark.startswith(GROUP_MARK_PREFIX) and group[2].mark == mark_id("ev-unfinished")
    store.write_marks([group[0].mark, group[2].mark], 2100)
    assert all(store.claim(e, FACTS, 3000).status is ReceiptStatus.PUBLISHED for e in ("ev-new", "ev-unfinished"))


def test_a_mark_in_the_collection_earlier_versions_wrote_still_counts(db: Database) -> None:
    store = MongoReceiptStore(db)
    store.claim("ev-old", FACTS, 900)
    db[LEGACY_PUBLISHED_COLLECTION].insert_one({"_id": "ev-old", "published_at_ms": 950})

    assert store.claim("ev-old", FACTS, 2000).status is ReceiptStatus.PUBLISHED


def test_a_claim_marks_earlier_groups_published_in_the_same_write(db: Database) -> None:
    store = MongoReceiptStore(db)
    earlier = store.claim_many([("ev-earlier-1", FACTS), ("ev-earlier-2", FACTS)], 1000)
    assert earlier[0].mark == earlier[1].mark  # one group, one mark

    group = store.claim_many(
        [("ev-next", FACTS), ("ev-earlier-1", FACTS), ("ev-earlier-2", FACTS)], 2000, [earlier[0].mark]
    )

    assert [(r.event_id, r.status, r.new) for r in group] == [
        ("ev-next", ReceiptStatus.RECEIVED, True),
        ("ev-earlier-1", ReceiptStatus.PUBLISHED, False),
        ("ev-earlier-2", ReceiptStatus.PUBLISHED, False),
    ]
    store.claim_many([("ev-other", FACTS)], 3000, [earlier[0].mark])  # a mark written twice: no error
    assert db[COLLECTION].find_one({"_id": earlier[0].mark}) == {"_id": earlier[0].mark, "published_at_ms": 2000}
    # Three receipts of two groups, one mark: a document per group, not per instance.
    assert db[COLLECTION].count_documents({}) == 5


def test_a_mark_of_its_own_written_by_an_earlier_version_still_counts(db: Database) -> None:
    store = MongoReceiptStore(db)
    db[COLLECTION].insert_one({"_id": "ev-old", "status": "received", "received_at_ms": 900})
    db[COLLECTION].insert_one({"_id": mark_id("ev-old"), "published_at_ms": 950})

    receipt = store.claim("ev-old", FACTS, 2000)

    assert receipt.status is ReceiptStatus.PUBLISHED and receipt.received_at_ms == 900


def test_a_receipt_of_a_group_that_never_got_its_mark_is_published_again_under_a_mark_of_its_own(db: Database) -> None:
    store = MongoReceiptStore(db)
    [lost] = store.claim_many([("ev-1", FACTS)], 1000)  # the group failed at the broker, or the process died
    store.write_marks([store.claim("ev-other", FACTS, 1100).mark], 1200)  # another group's mark

    again = store.claim("ev-1", FACTS, 2000)

    assert again.status is ReceiptStatus.RECEIVED and again.received_at_ms == 1000 and again.mark == mark_id("ev-1")
    assert again.mark != lost.mark
    store.write_marks([again.mark], 2100)
    assert store.claim("ev-1", FACTS, 3000).status is ReceiptStatus.PUBLISHED

"""How a receipt page entry becomes an update of its delivery, and how a batch of them is named (pure)."""

from __future__ import annotations

from pymongo import UpdateOne

from services.delivery.delivered import (
    LAST_STORED,
    OWED,
    STORED_OVER,
    ReceiptUpdates,
    _receipt_updates,
    _receipts_page_id,
)

KEY = "lab/2.25.1/2.25.1.1/2.25.1.1.1"
THIS_SEND_OR_EARLIER = [{"ingested_at_ms": {"$lte": 5}}, {"ingested_at_ms": {"$exists": False}}]
NOT_STORED_OVER_SINCE = [{"$or": [{STORED_OVER: {"$exists": False}}, {STORED_OVER: {"$lte": 9}}]}]


def test_a_receipt_naming_its_send_marks_that_send_or_an_earlier_one_only() -> None:
    entry = {"key": KEY, "delivery_id": "d1", "status": "stored", "at_ms": 9, "ingested_at_ms": 5}
    assert _receipt_updates(entry).marks == [
        UpdateOne(
            {"_id": KEY, "delivery_id": "d1", "$or": THIS_SEND_OR_EARLIER, "$and": NOT_STORED_OVER_SINCE},
            {"$min": {"stored_at_ms": 9}, "$unset": {OWED: ""}, "$max": {LAST_STORED: 9}},
        )
    ]


def test_only_a_store_naming_its_delivery_can_show_another_delivery_was_stored_over() -> None:
    """A stored receipt naming its delivery may be of an older one than recorded (integration tests:
    test_delivered_objects.py); a dead letter, or a receipt naming none (an earlier release's), cannot."""
    stored = {"key": KEY, "delivery_id": "d1", "status": "stored", "at_ms": 9, "ingested_at_ms": 5}
    kinds = [(len(u.marks), len(u.stored_over), len(u.owed_again)) for u in map(_receipt_updates, [
        stored, {**stored, "delivery_id": ""}, {**stored, "status": "dead_lettered"},
    ])]  # fmt: skip
    assert kinds == [(1, 1, 1), (1, 0, 0), (1, 0, 0)]


def test_a_receipt_without_a_delivery_id_is_about_a_delivery_made_by_its_time_and_may_name_its_send() -> None:
    entry = {"key": KEY, "delivery_id": "", "status": "dead_lettered", "at_ms": 9, "ingested_at_ms": 5}
    # A dead letter leaves the delivery owed.
    assert _receipt_updates(entry) == ReceiptUpdates(
        marks=[
            UpdateOne(
                {"_id": KEY, "delivered_at_ms": {"$lte": 9}, "$or": THIS_SEND_OR_EARLIER},
                {"$min": {"dead_lettered_at_ms": 9}},
            )
        ]
    )


def test_an_entry_an_earlier_release_wrote_names_no_send_and_applies_to_any() -> None:
    entry = {"key": KEY, "delivery_id": "d1", "status": "stored", "at_ms": 9}
    assert _receipt_updates(entry).marks == [
        UpdateOne(
            {"_id": KEY, "delivery_id": "d1", "$and": NOT_STORED_OVER_SINCE},
            {"$min": {"stored_at_ms": 9}, "$unset": {OWED: ""}, "$max": {LAST_STORED: 9}},
        )
    ]


def test_receipts_of_two_sends_of_one_delivery_are_two_pages_and_a_replayed_batch_one() -> None:
    """A repeat's receipt has the first store's key, id, status and time: without its send in the page's
    name, a batch holding only it would be taken for the first batch replayed, and never folded."""
    first = {"key": KEY, "delivery_id": "d1", "status": "stored", "at_ms": 9, "ingested_at_ms": 5}
    repeat = {**first, "ingested_at_ms": 7}
    other = {**first, "key": KEY + "2"}
    assert _receipts_page_id([first]) != _receipts_page_id([repeat])
    assert _receipts_page_id([first, other]) == _receipts_page_id([other, first])

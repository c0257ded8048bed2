"""Leaf ids of the analysts' queries and the control plane's changes can never be a pipeline record's, and
their digest covers every stored field under the leaf id."""

from __future__ import annotations

from datetime import UTC, datetime

from services.audit.access_log import AccessEntry
from services.audit.log_entries import digest_of_own_fields, record_digest
from services.audit.log_sources import ACCESS, CHANGE, is_side_entry, leaf_form
from services.audit.records import EventType


def test_no_record_id_looks_like_a_query_or_change() -> None:
    for event_type in EventType:
        assert not is_side_entry(f"{event_type.value}:some-event-id")
    assert is_side_entry(ACCESS + "query:1") and is_side_entry(CHANGE + "1733100000000:ab")


def test_a_query_digests_as_stored_under_its_leaf_id() -> None:
    entry = AccessEntry("ana", "all", "GET", "/audit/summary", {"since": "2026-01-01"}, 200,
                        occurred_at=datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=UTC))  # fmt: skip
    appended = leaf_form(ACCESS, entry.document())
    assert appended["_id"] == ACCESS + entry.entry_id
    fields, digest = digest_of_own_fields(appended)
    # as MongoDB gives it back: milliseconds, naive UTC
    stored = {**entry.document(), "occurred_at": datetime(2026, 12, 2, 10, 0, 0, 123000)}
    assert record_digest(leaf_form(ACCESS, stored), fields) == digest
    assert record_digest(leaf_form(ACCESS, {**stored, "status": 404}), fields) != digest

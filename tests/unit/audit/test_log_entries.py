"""What a leaf commits to: canonical JSON is byte for byte what json.dumps writes (orjson writes it, and
leaves already stored must keep their hashes), and a record's stored form has the same digest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.audit.log_entries import (
    CONFLICT,
    PACKED,
    _encode,
    canonical_json,
    covered_fields,
    digest_of_own_fields,
    packed_form,
    record_digest,
    stored_form,
    unpacked,
)
from services.audit.records import build_record
from services.common.topics import Topics
from tests.unit.audit.builders import Instance, incoming, journey, quarantined

TOPICS = Topics("t-le.")


def _json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_encode
    ).encode("utf-8")


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.text()
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.just(UTC))
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
)


@given(st.dictionaries(st.text(), values, max_size=8))
def test_canonical_json_is_what_json_dumps_writes(value: dict[str, Any]) -> None:
    assert canonical_json(value) == _json(value)


def test_a_records_stored_form_has_the_digest_of_its_fields_with_values() -> None:
    now = datetime(2026, 2, 1, tzinfo=UTC)
    messages = [*journey(TOPICS, Instance()), quarantined(TOPICS, Instance(sop="1.2.3.9"), 0)]
    for record in (build_record(incoming(m), TOPICS, now) for m in messages):
        stored = stored_form(record)
        fields, digest = digest_of_own_fields(record)
        assert None not in stored.values() and "recorded_at" not in fields
        assert fields == covered_fields(stored)
        assert digest == record_digest(stored, fields) == record_digest(record, fields)


def test_a_packed_record_unpacks_to_its_stored_form_with_the_same_digest() -> None:
    now = datetime(2026, 2, 1, tzinfo=UTC)
    messages = [*journey(TOPICS, Instance()), quarantined(TOPICS, Instance(sop="1.2.3.9"), 0)]
    for record in (build_record(incoming(m), TOPICS, now) for m in messages):
        packed = packed_form(record)
        assert set(packed) == {"_id", PACKED}
        stored = unpacked({**packed, "_b": "batch", "_l": 7})
        assert stored == {**stored_form(record), "_b": "batch", "_l": 7}
        fields, digest = digest_of_own_fields(record)
        assert record_digest(stored, fields) == digest


def test_a_field_both_packed_and_beside_the_packed_ones_is_a_conflict_not_either_value() -> None:
    record = build_record(incoming(journey(TOPICS, Instance())[0]), TOPICS, datetime(2026, 2, 1, tzinfo=UTC))
    fields, digest = digest_of_own_fields(record)
    for value in (record["event_type"], "made-up"):  # even the same value beside it is not what was stored
        stored = unpacked({**packed_form(record), "event_type": value})
        assert stored["event_type"] == {CONFLICT: [value, record["event_type"]]}
        assert record_digest(stored, fields) != digest


def test_a_document_without_packed_fields_or_with_garbled_ones_is_left_as_it_is() -> None:
    assert unpacked({"_id": "x", "event_type": "routed"}) == {"_id": "x", "event_type": "routed"}
    assert unpacked({"_id": "x", PACKED: b"\x05\x00"}) == {"_id": "x", PACKED: b"\x05\x00"}

"""The trail and the events page are written without a model per event: the bytes are exactly what
pydantic writes for the models (the API's answer shape), for every kind of record, stored or not."""

from __future__ import annotations

from datetime import UTC, datetime

from services.audit.models import AuditEvent, EventPageOut
from services.audit.pages import pack, unpack
from services.audit.records import build_record
from services.audit.trail import build_trail, events_json, trail_json
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, dead_letter, incoming, journey, quarantined
from tests.unit.audit.test_pages import bson_page

TOPICS = Topics("t-tj.")


def _records() -> list:  # type: ignore[type-arg]
    instance = Instance()
    messages = [*journey(TOPICS, instance, t0_ms=T0_MS + 123), quarantined(TOPICS, Instance(sop="1.2.3.9"), T0_MS)]
    messages.append(dead_letter(TOPICS, messages[0]))
    whole_second = datetime(2026, 2, 1, tzinfo=UTC)  # no microseconds: written without a fraction
    return [build_record(incoming(m, offset=i), TOPICS, whole_second) for i, m in enumerate(messages)]


def test_a_trail_is_byte_for_byte_what_pydantic_writes() -> None:
    records = _records()
    study = records[0]["study_uid"]
    assert study is not None
    expected = build_trail(study, records)
    assert expected is not None
    from_json, from_bson = unpack(pack(records)), unpack(bson_page(records))
    # As built, as read back from a JSON page (its lines copied) or a BSON one, and from both at once.
    for given in (records, from_json, from_bson, from_json[:3] + from_bson[3:]):
        assert trail_json(study, given) == expected.model_dump_json().encode()
    assert trail_json(study, []) is None


def test_an_events_page_is_byte_for_byte_what_pydantic_writes() -> None:
    for records in (unpack(pack(_records())), unpack(bson_page(_records()))):
        page = EventPageOut(events=[AuditEvent.from_record(r) for r in records], next_cursor=None)
        assert b'{"events":' + events_json(records) + b',"next_cursor":null}' == page.model_dump_json().encode()
    assert events_json([]) == b"[]"

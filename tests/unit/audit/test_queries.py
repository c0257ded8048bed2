"""Cursors, filters and the order of a trail (pure parts of the queries)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit.queries import Cursor, EventFilter, decode_cursor, encode_cursor, mongo_filter
from services.audit.records import EventType, build_record, to_datetime
from services.audit.settings import AuditSettings
from services.audit.trail import in_order
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey


@given(
    ms=st.integers(min_value=0, max_value=4_102_444_800_000),
    record_id=st.text(min_size=1, max_size=80).filter(lambda s: "\x00" not in s),
)
def test_a_cursor_round_trips(ms: int, record_id: str) -> None:
    cursor = Cursor(to_datetime(ms), record_id)
    assert decode_cursor(encode_cursor(cursor)) == cursor


@pytest.mark.parametrize("token", ["", "!!!", "bm9waXBl", "MTIzfA", "YWJjfGlk", "/w"])
def test_a_forged_cursor_is_rejected(token: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(token)


def test_filters_become_one_mongo_condition() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    after = Cursor(since + timedelta(hours=1), "routed:abc")
    query = mongo_filter(EventFilter(org="trust-a", event_type=EventType.ROUTED, since=since), after)
    assert query == {
        "$and": [
            {"source_org": "trust-a"},
            {"event_type": "routed"},
            {"occurred_at": {"$gte": since}},
            {
                "$or": [
                    {"occurred_at": {"$gt": after.occurred_at}},
                    {"occurred_at": after.occurred_at, "_id": {"$gt": "routed:abc"}},
                ]
            },
        ]
    }
    assert mongo_filter(EventFilter()) == {}
    # A partner's events include those that asked for it (tests/integration/audit/test_scopes.py).
    assert mongo_filter(EventFilter(partner="p")) == {"$or": [{"partner_id": "p"}, {"requested_partner_id": "p"}]}


def test_events_of_the_same_millisecond_are_in_hop_order() -> None:
    topics = Topics()
    same_time = [incoming(m, timestamp_ms=T0_MS) for m in journey(topics, Instance(), t0_ms=0)]
    records = [build_record(m, topics, datetime.now(UTC)) for m in same_time]
    for r in records:
        r["occurred_at"] = to_datetime(T0_MS)
    kinds = [r["event_type"] for r in in_order(reversed(records))]
    assert kinds == ["ingested", "routed", "prepared", "outcome", "receipt"]


def test_settings_defaults_and_service_specific_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_HOST", "HTTP_PORT", "GRPC_PORT"):
        monkeypatch.delenv(f"IMX_{name}", raising=False)
        monkeypatch.delenv(f"IMX_AUDIT_{name}", raising=False)
    defaults = AuditSettings()
    assert (defaults.http_host, defaults.http_port, defaults.grpc_port) == ("127.0.0.1", 8045, 15055)
    monkeypatch.setenv("IMX_GRPC_PORT", "6000")
    monkeypatch.setenv("IMX_AUDIT_GRPC_PORT", "6001")
    monkeypatch.setenv("IMX_HTTP_PORT", "9000")
    monkeypatch.setenv("IMX_TOPIC_PREFIX", "p.")
    settings = AuditSettings()
    assert (settings.grpc_port, settings.http_port, settings.topic_prefix) == (6001, 9000, "p.")

"""Which keyed documents a retention horizon covers (pure): the days before the cutoff's UTC day, each
day's counter documents and month documents, the study chains its records name, the days a journal
counted, and when a period asked for is wholly purged."""

from __future__ import annotations

from datetime import UTC, datetime

import bson

from services.audit.keyed_retention import (
    counter_ids,
    day_start_ms,
    days_to_purge,
    horizon_day,
    hours_of,
    journal_days,
    month_keys,
    scope_keys,
    study_keys,
)
from services.audit.queries import wholly_purged
from services.audit.records import AuditRecord, build_record
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey

TOPICS = Topics("t-u.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)


def records() -> list[AuditRecord]:
    return [build_record(incoming(m, offset=i), TOPICS, NOW) for i, m in enumerate(journey(TOPICS, Instance()))]


def test_the_horizon_is_the_cutoffs_utc_day_and_only_days_before_it_go() -> None:
    assert horizon_day(T0_MS) == "2026-01-01"
    assert horizon_day(T0_MS + 86_399_999) == "2026-01-01"
    assert days_to_purge("2025-12-30", "2026-01-01") == ["2025-12-30", "2025-12-31"]
    assert days_to_purge("2026-01-01", "2026-01-01") == [] and days_to_purge("2026-01-05", "2026-01-01") == []
    assert day_start_ms("2026-01-01") == T0_MS
    assert hours_of("2026-01-01")[0] == T0_MS and hours_of("2026-01-01")[-1] == T0_MS + 23 * 3_600_000


def test_a_days_counters_cover_every_shard_and_the_scopes_of_its_records() -> None:
    ids = counter_ids("2026-01-01", scope_keys(records()))
    assert "x:2026-01-01" in ids and "v:modality:2026-01-01" in ids
    assert {f"v:org:2026-01-01:{s}" for s in range(4)} <= set(ids)
    assert {f"t:2026-01-01:{s}" for s in range(4)} <= set(ids)
    assert {"xs:org:trust-a:2026-01-01", "xs:partner:research-a:2026-01-01"} <= set(ids)
    assert all("2026-01-01" in i for i in ids)  # nothing of another day
    assert set(month_keys("2026-01-01", records())) == {"vm:org:2026-01:trust-a", "vm:partner:2026-01:research-a"}


def test_a_study_and_its_de_identified_copy_are_both_rewritten() -> None:
    keys = study_keys(records())
    assert f"s:{Instance().study}" in keys and len(keys) == 2


def test_a_journal_names_the_days_it_counted_month_documents_aside() -> None:
    deltas = {"x:2026-01-01": {"t.ingested": 1}, "v:org:2026-01-02:1": {"trust-a.s": 1},
              "vm:org:2026-01:trust-a": {"03.i": 1}}  # fmt: skip
    assert journal_days({"d": bson.encode({"d": deltas})}) == {"2026-01-01", "2026-01-02"}


def test_a_period_is_purged_only_when_it_ends_by_the_first_retained_day() -> None:
    start = datetime(2026, 1, 10, tzinfo=UTC)
    assert wholly_purged(start, "2026-01-10")
    assert not wholly_purged(datetime(2026, 1, 10, 0, 0, 1, tzinfo=UTC), "2026-01-10")
    assert not wholly_purged(None, "2026-01-10") and not wholly_purged(start, None)

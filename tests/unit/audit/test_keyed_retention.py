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
    purged_on,
    scope_keys,
    study_keys,
)
from services.audit.queries import wholly_purged
from services.audit.records import AuditRecord, build_record, to_datetime
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


def test_a_study_chain_loses_the_days_purged_records_not_a_late_event_paged_since() -> None:
    """The day's chains are rewritten after its records were read: a late event of that day paged since
    (recorded now, after the cutoff, and still in N) stays in its study's trail."""
    day_start, cutoff = T0_MS, T0_MS + 40 * 86_400_000
    in_n: set[str] = {"late", "replayed-kept"}
    purged = purged_on("2026-01-01", cutoff, lambda record_id: record_id not in in_n)

    def copy(record_id: str, occurred_ms: int, recorded_ms: int) -> AuditRecord:
        record = records()[0]
        return {**record, "_id": record_id, "occurred_at": to_datetime(occurred_ms),
                "recorded_at": to_datetime(recorded_ms)}  # fmt: skip

    assert purged(copy("old", day_start + 5, day_start + 9))
    assert not purged(copy("late", day_start + 5, cutoff + 1))
    assert purged(copy("replayed-gone", day_start + 5, cutoff + 1)), "paged again later, its record purged"
    assert not purged(copy("replayed-kept", day_start + 5, cutoff + 1))
    assert not purged(copy("next-day", day_start + 86_400_000, day_start + 9))

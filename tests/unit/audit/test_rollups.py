"""The counters behind the aggregates: keys that survive MongoDB field names, mergeable turnaround
histograms whose percentiles stay within a bin's width, and what each kind of record adds."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit import rollups
from services.audit.records import build_record
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey, quarantined

TOPICS = Topics("t-r.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)


@given(st.text(max_size=30))
def test_any_key_survives_encoding_as_a_field_name(key: str) -> None:
    encoded = rollups.enc(key)
    assert "." not in encoded and not encoded.startswith("$") and encoded
    assert rollups.dec(encoded) == key


def test_percentiles_from_merged_histograms_are_within_a_bins_width() -> None:
    rng = random.Random(3)
    values = [int(rng.lognormvariate(8, 1.2)) for _ in range(5000)]
    halves: list[dict[int, int]] = [{}, {}]
    for i, v in enumerate(values):  # two days' histograms, merged by adding counts
        b = rollups.turnaround_bin(v)
        halves[i % 2][b] = halves[i % 2].get(b, 0) + 1
    merged = {b: halves[0].get(b, 0) + halves[1].get(b, 0) for b in set(halves[0]) | set(halves[1])}
    exact = statistics.quantiles(values, n=100, method="inclusive")
    for pct in (50, 90, 95, 99):
        assert rollups.percentile(merged, pct) == pytest.approx(exact[pct - 1], rel=0.07)
    assert rollups.percentile({}, 50) is None
    assert rollups.turnaround_bin(0) == 0 and rollups.bin_value(0) == 0


def test_each_record_kind_adds_to_its_counters() -> None:
    messages = [*journey(TOPICS, Instance()), quarantined(TOPICS, Instance(sop="1.2.3.9"), T0_MS + 50)]
    records = [build_record(incoming(m), TOPICS, NOW) for m in messages]
    marks = [m for r in records for m in rollups.study_marks(r)]
    docs: dict[str, dict[str, object]] = {}
    rollups.apply(docs, rollups.deltas_for(records, marks))
    day = "2026-01-01"
    [org] = rollups.volumes(docs.get, "org", [day], "trust-a")  # type: ignore[arg-type]
    assert (org.instances, org.studies, org.bytes) == (1, 1, 10)
    [partner] = rollups.volumes(docs.get, "partner", [day])  # type: ignore[arg-type]
    assert (partner.key, partner.instances, partner.delivered, partner.failed) == ("research-a", 1, 1, 0)
    [t] = rollups.turnaround(docs.get, [day], "research-a")  # type: ignore[arg-type]
    assert sum(t.histogram.values()) == 1 and rollups.percentile(t.histogram, 50) == pytest.approx(40, rel=0.07)
    [q] = rollups.stage_reasons(docs.get, [day])  # type: ignore[arg-type]
    assert (q.kind, q.stage, q.reason, q.count) == ("quarantined", "routing", "no-route", 1)
    counts = rollups.summary_counts(docs.get, [day])  # type: ignore[arg-type]
    assert counts["t"] == {"ingested": 1, "routed": 1, "prepared": 1, "outcome": 1, "receipt": 1, "quarantined": 1}
    assert rollups.volume_doc("org", day, "trust-a").startswith(f"v:org:{day}:")
    assert rollups.volume_docs("modality", day) == [f"v:modality:{day}"]


def test_a_keys_month_document_gives_the_same_rows_as_its_daily_documents() -> None:
    """`vm:` documents hold one organisation's or partner's days of a month: one read for a month."""
    records, marks = [], []
    for n, day_offset in enumerate((0, 0, 1, 31, 33)):  # four days over two months
        t0 = T0_MS + day_offset * 86_400_000 + n
        study = f"1.2.3.{day_offset}"
        instance = Instance(study=study, series=f"{study}.1", sop=f"{study}.1.{n}")
        built = [build_record(incoming(m), TOPICS, NOW) for m in journey(TOPICS, instance, t0_ms=t0)]
        records += built
        marks += [m for r in built for m in rollups.study_marks(r)]
    docs: dict[str, dict[str, object]] = {}
    rollups.apply(docs, rollups.deltas_for(records, dict.fromkeys(marks)))
    days = list(rollups.days_between(datetime(2026, 1, 1).date(), datetime(2026, 2, 5).date()))
    for dimension, key in (("org", "trust-a"), ("partner", "research-a")):
        months = [f"vm:{dimension}:2026-01:{key}", f"vm:{dimension}:2026-02:{key}"]
        assert rollups.month_ids(dimension, days, key) == months
        daily = rollups.volumes(docs.get, dimension, days, key)  # type: ignore[arg-type]
        assert len(daily) == 4 and daily == rollups.month_volumes(docs.get, dimension, days, key)  # type: ignore[arg-type]
    assert daily[0].studies == 1 and daily[0].instances == 2 and daily[0].delivered == 2


def test_the_last_day_there_is_ends_the_days_between() -> None:
    """One more day after 9999-12-31 is an OverflowError: a 500 for a period ending then."""
    last = date.max
    assert list(rollups.days_between(last - timedelta(days=1), last)) == ["9999-12-30", "9999-12-31"]

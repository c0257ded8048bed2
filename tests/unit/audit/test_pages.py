"""Page payloads: JSON lines now, BSON before; a page of either format reads back the records as MongoDB
would have kept them, and a record read from a JSON page carries exactly the JSON it is answered with."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import bson

from services.audit.log_entries import stored_form
from services.audit.pages import JSON_LINES, PageChains, StoredRecord, pack, record_json, unpack
from services.audit.records import AuditRecord, build_record
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, dead_letter, incoming, journey, quarantined

TOPICS = Topics("t-pg.")


def bson_page(records: Sequence[AuditRecord]) -> dict[str, Any]:
    """A page as the store wrote it before JSON lines (no `f`): exactly the old `pack`."""
    return {"b": zlib.compress(bson.encode({"r": [stored_form(r) for r in records]}), 1)}


def _records() -> list[AuditRecord]:
    instance = Instance()
    messages = [*journey(TOPICS, instance, t0_ms=T0_MS + 123), quarantined(TOPICS, Instance(sop="1.2.3.9"), T0_MS)]
    messages.append(dead_letter(TOPICS, messages[0]))  # a dead letter: `source` is a nested document
    now = datetime(2026, 2, 1, 12, 30, 1, 250_000, tzinfo=UTC)
    return [build_record(incoming(m, offset=i), TOPICS, now) for i, m in enumerate(messages)]


def test_json_and_bson_pages_read_back_the_same_records() -> None:
    records = _records()
    page = pack(records)
    assert page["f"] == JSON_LINES
    assert unpack(page) == unpack(bson_page(records)) == records


def test_times_are_kept_as_bson_keeps_them() -> None:
    """Milliseconds, in UTC; a naive time taken as UTC (what a page read back gave before)."""
    odd = dict(_records()[0])
    odd["occurred_at"] = datetime(2026, 1, 1, 13, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=1)))
    odd["ingested_at"] = datetime(2026, 1, 1, 11, 59, 59, 999_999)
    records: list[AuditRecord] = [odd]  # type: ignore[list-item]
    [from_json], [from_bson] = unpack(pack(records)), unpack(bson_page(records))
    assert from_json == from_bson
    assert from_json["occurred_at"] == datetime(2026, 1, 1, 12, 0, 0, 123_000, tzinfo=UTC)
    assert from_json["ingested_at"] == datetime(2026, 1, 1, 11, 59, 59, 999_000, tzinfo=UTC)
    assert all(from_json[n].tzinfo == UTC for n in ("occurred_at", "ingested_at", "recorded_at"))


def test_a_record_read_from_a_json_page_carries_its_answer_json() -> None:
    for r in unpack(pack(_records())):
        assert type(r) is StoredRecord and r.json == record_json(r)


def test_records_already_known_may_be_left_out() -> None:
    records = _records()
    odd = [dict(records[0], _id='quote"and\\backslash'), dict(records[1], _id="accentué:1")]
    page = pack([*records, *odd])  # type: ignore[list-item]
    known = {records[0]["_id"], records[2]["_id"], "accentué:1", 'quote"and\\backslash'}
    ids = [r["_id"] for r in unpack(page, known)]
    # An id written with an escape is parsed rather than guessed at: kept (leaving out is only allowed).
    assert ids == [r["_id"] for r in records if r["_id"] not in known] + ['quote"and\\backslash']
    assert [r["_id"] for r in unpack(bson_page(records), known)] == [r["_id"] for r in records], "BSON: all"


class _Pages:
    """A pages collection by `_id` (all PageChains reads)."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs

    def find_one(self, query: dict[str, str], projection: object = None) -> dict[str, Any] | None:
        return self.docs.get(query["_id"])


def _reading(docs: dict[str, dict[str, Any]]) -> tuple[PageChains, list[str]]:
    """Chains over `docs`, and the page ids in the order they are asked for."""
    chains = PageChains(_Pages(docs))  # type: ignore[arg-type]
    asked: list[str] = []
    submit = chains.executor.submit

    def recording(fn: Callable[[str], Any], page_id: str) -> Future[Any]:
        asked.append(page_id)
        return submit(fn, page_id)

    chains.executor.submit = recording  # type: ignore[method-assign]
    return chains, asked


def _chain(key: str, pages: int, records: Sequence[AuditRecord]) -> dict[str, dict[str, Any]]:
    return {f"{key}#{n}": pack(records) for n in range(pages)}


def test_a_chain_is_read_to_its_first_miss_and_chains_named_on_the_way_are_asked_for_at_once() -> None:
    records = _records()
    docs = {**_chain("s:a", 8, records[:1]), **_chain("s:b", 2, records[1:2])}
    docs["s:a#9"] = pack(records[2:3])  # after the chain's first miss (#8): not part of it
    chains, asked = _reading(docs)
    follows: list[int] = []

    def follow(read: Mapping[str, list[AuditRecord]]) -> list[str]:
        follows.append(len(read["s:a"]))
        return ["s:b"]

    found = chains.read_many(["s:a"], 6, (), follow)
    assert found == {"s:a": records[:1] * 8, "s:b": records[1:2] * 2}
    # s:b is named by the first page of s:a, so it is asked for before the rest of s:a's chain (#6 on).
    assert asked.index("s:b#0") < asked.index("s:a#6")
    assert follows[0] == 1  # called after each page, not after each round


def test_chains_named_twice_are_read_once_keeping_a_few_pages_asked_for_past_the_last_found() -> None:
    records = _records()
    chains, asked = _reading(_chain("m:1", 3, records[:2]))
    assert chains.read_many(["m:1", "m:1"], first_round=1) == {"m:1": records[:2] * 3}
    # #0, then #1 and #2 once #0 is in, #3 once #1 is, #4 once #2 is (#3, the first miss, ends it).
    assert asked == [f"m:1#{n}" for n in range(5)]


def test_a_long_chain_costs_a_few_misses_not_a_round_of_them() -> None:
    records = _records()
    for pages in (4, 6, 7, 13):
        chains, asked = _reading(_chain("s:a", pages, records[:1]))
        assert chains.read_many(["s:a"], 6) == {"s:a": records[:1] * pages}
        assert asked == [f"s:a#{n}" for n in range(len(asked))]
        assert len(asked) - pages <= max(6 - pages, 2 + pages // 3), (pages, asked)


def test_a_followed_chain_leaves_out_what_is_known_and_starts_with_its_own_round() -> None:
    records = _records()
    docs = {**_chain("s:a", 2, records[:2]), **_chain("s:b", 1, records[:3])}
    chains, asked = _reading(docs)
    known = {records[0]["_id"], records[1]["_id"]}
    found = chains.read_many(["s:a"], 6, (), lambda read: ["s:b"], 2, known)
    # The first chain is parsed whole (its second page repeats the first); the followed one leaves out known ids.
    assert found == {"s:a": records[:2] * 2, "s:b": records[2:3]}
    assert [a for a in asked if a.startswith("s:b")][:2] == ["s:b#0", "s:b#1"]

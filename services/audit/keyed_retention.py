"""Retention of the keyed documents derived from records (issue 8 item 6): pages, marks, counters and
journals of UTC days before the horizon, purged a day at a time by `_id` (services/audit/README.md,
"Retention of the keyed documents").

The horizon is the start of the UTC day of the record purge's cutoff: a day before it goes once none of
its records (those its minute pages hold) is left in the records collection N, i.e. once the record
purge (retention.py, by append time) has removed them all; a late event keeps its day until it is purged
too (meanwhile the study chains already drop the day's purged records). A day goes in this order, each
step idempotent, so a run killed anywhere is finished by the next: (1) the day's records are read from
its minute pages (the source of everything below, deleted last); (2) each study chain naming them is
rewritten in place without them (a page left empty stays, so the chain keeps no gap and a writer
appending to it is unaffected); (3) the study marks of the day; (4) the journals of batches that counted
nothing after the day (`jd:<day>` in N_marks, written by the record purge, names them; a journal
counting later days is handed on to its last day's list); (5) the day's counters, and its figures in the
month documents (a month document left without days goes); (6) the minute pages and the day's
`tm`/`th`/`td` marks; (7) `retained` (N_counts) moves past the day.

Counting once holds: a journal goes only when every day it counted has gone, so no mark or record it
owns is left for a later duplicate to take over (counters.py).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import bson
from pymongo.collection import Collection

from services.audit import rollups
from services.audit.pages import PageChains, pack, unpack
from services.audit.records import AuditRecord, to_epoch_ms

log = logging.getLogger(__name__)
MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
RECORDS_AT_ONCE = 5_000  # about how many records a day's purge holds at once (~4 KB each in memory)
PAGES_AT_ONCE = 12  # pages asked for at once (each up to pages.PAGE_RECORDS, 500, records)
RETAINED = "retained"  # N_counts: {"from": the first day whose keyed documents are kept}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def horizon_day(cutoff_ms: int) -> str:
    """The first day kept: the UTC day of the cutoff (a day before it is wholly past the retention age)."""
    return datetime.fromtimestamp(cutoff_ms // DAY_MS * DAY_MS / 1000, UTC).date().isoformat()


def days_to_purge(first: str, horizon: str) -> list[str]:
    """The days from the first one recorded up to, not including, the horizon."""
    if first >= horizon:
        return []
    return list(rollups.days_between(date.fromisoformat(first), date.fromisoformat(horizon) - timedelta(days=1)))


def day_start_ms(day: str) -> int:
    return to_epoch_ms(datetime.fromisoformat(day).replace(tzinfo=UTC))


def hours_of(day: str) -> list[int]:
    start = day_start_ms(day)
    return [start + h * HOUR_MS for h in range(24)]


def scope_keys(records: Iterable[AuditRecord]) -> list[str]:
    """The scopes whose summaries count the records."""
    return list(dict.fromkeys(k for r in records for k in rollups.scope_keys(r)))


def counter_ids(day: str, scopes: Iterable[str]) -> list[str]:
    """The day's counter documents: every shard of each kind, and the scoped summaries of `scopes`."""
    ids = [rollups.summary_doc(day), *rollups.volume_docs("org", day), *rollups.volume_docs("partner", day)]
    ids += [*rollups.volume_docs("modality", day), *rollups.turnaround_docs(day)]
    return ids + [rollups.summary_doc(day, scope) for scope in dict.fromkeys(scopes)]


def month_keys(day: str, records: Iterable[AuditRecord]) -> list[str]:
    """The month documents holding the day's figures of the records' organisations and partners."""
    keys: dict[str, None] = {}
    for r in records:
        if r["source_org"] is not None:
            keys[rollups.month_doc("org", day[:7], r["source_org"])] = None
        if r["partner_id"] is not None:
            keys[rollups.month_doc("partner", day[:7], r["partner_id"])] = None
    return list(keys)


def one_of(ids: set[str]) -> Callable[[AuditRecord], bool]:
    """Whether a record is one of `ids`."""
    return lambda record: record["_id"] in ids


def purged_on(day: str, cutoff_ms: int, gone: Callable[[str], bool]) -> Callable[[AuditRecord], bool]:
    """Whether a copy is of a record of the UTC day that the record purge took: recorded before the cutoff
    (a late event paged after the day was read has a recent time, and stays), or asked of N (`gone`) when
    its copy's time is later (a batch stored again after a crash pages its copies later)."""
    start = day_start_ms(day)

    def purged(record: AuditRecord) -> bool:
        if not start <= to_epoch_ms(record["occurred_at"]) < start + DAY_MS:
            return False
        return to_epoch_ms(record["recorded_at"]) < cutoff_ms or gone(record["_id"])

    return purged


def study_keys(records: Iterable[AuditRecord]) -> list[str]:
    return list(dict.fromkeys(f"s:{u}" for r in records for u in (r["study_uid"], r["delivered_study_uid"]) if u))


def journal_days(journal: dict[str, Any]) -> set[str]:
    """The days whose counters a journal moved (every record and study a batch counts moves its day's)."""
    deltas: dict[str, Any] = bson.decode(bytes(journal["d"]))["d"]
    # Every day moves `x:<day>` or a `v:`/`t:` document (month documents repeat days the `v:` ones name);
    # a day-like organisation name can only add a day, which keeps the journal longer, never shorter.
    return {day for doc_id in deltas if not doc_id.startswith("vm:") for day in _DAY.findall(doc_id)}


class KeyedPurge:
    """Purges the keyed documents of days before a horizon from the store's collections (store.py names
    them: N, N_pages, N_marks, N_counts)."""

    def __init__(self, records: Collection[dict[str, Any]], max_days: int = 31) -> None:
        db = records.database
        self._records = records
        self._pages, self._marks, self._counts = (db[f"{records.name}_{n}"] for n in ("pages", "marks", "counts"))
        self._chains = PageChains(self._pages)
        self._max_days = max_days

    def purge(self, cutoff_ms: int) -> list[str]:
        """Purges the days before `horizon_day(cutoff_ms)` still recorded; returns those that went."""
        bounds = self._counts.find_one({"_id": "bounds"})
        if bounds is None:
            return []
        gone: list[str] = []
        for day in days_to_purge(str(bounds["first"]), horizon_day(cutoff_ms))[: self._max_days]:
            if not self.purge_day(day, cutoff_ms):
                break  # a record of the day is still kept: later days wait, so `retained` only moves forward
            gone.append(day)
        if gone:
            log.info("audit retention: purged the keyed documents of past days", extra={"instances": len(gone)})
        return gone

    def _recorded_minutes(self, day: str) -> list[int]:
        """The minutes of the day its `th` marks say may hold pages (none without the day's `td` mark)."""
        hours = hours_of(day)
        marks = self._chains.get_many(self._marks, [f"td:{hours[0]}", *(f"th:{h}" for h in hours)])
        if marks[f"td:{hours[0]}"] is None:
            return []
        return [h + m * MINUTE_MS for h in hours if marks[f"th:{h}"] is not None for m in range(60)]

    def _records_by_pages(self, minutes: Sequence[int], lengths: dict[int, int]) -> Iterator[list[AuditRecord]]:
        """The minutes' records, about RECORDS_AT_ONCE at a time, read page by page: PAGES_AT_ONCE pages
        asked for at once, the next page of each chain still going and the first of the next minutes. So
        a sparse day costs few rounds, and what is held is one group and one round's pages, however dense
        the day (at 120 instances/s a minute is ~43,000 records, a day ~60 million). `lengths` is filled
        in: each minute's number of pages, for those that have any."""
        chains: deque[tuple[int, int]] = deque((m, 0) for m in minutes)  # (minute, next page number)
        group: dict[str, AuditRecord] = {}
        while chains:
            asked = [chains.popleft() for _ in range(min(PAGES_AT_ONCE, len(chains)))]
            pages = self._chains.get_many(self._pages, [f"m:{m}#{n}" for m, n in asked], {"b": 1, "f": 1})
            going = []
            for minute, n in asked:
                page = pages[f"m:{minute}#{n}"]
                if page is None:
                    continue  # the chain ends here
                lengths[minute] = n + 1
                going.append((minute, n + 1))
                for record in unpack(page):
                    group.setdefault(record["_id"], record)
            chains.extendleft(reversed(going))  # a chain's pages in order, before the next minutes
            if len(group) >= RECORDS_AT_ONCE:
                yield list(group.values())
                group = {}
        if group:
            yield list(group.values())

    def purge_day(self, day: str, cutoff_ms: int) -> bool:
        """False while a record of the day is still in N (only the study chains lose the day's purged
        records then). A day without minute pages has nothing derived left (they go last), only perhaps
        its journal list."""
        minutes = self._recorded_minutes(day)
        lengths: dict[int, int] = {}
        scopes: dict[str, None] = {}
        months: dict[str, None] = {}
        studies: dict[str, None] = {}
        marks: dict[str, None] = {}
        waits = False
        for records in self._records_by_pages(minutes, lengths):
            kept = self._chains.get_many(self._records, [r["_id"] for r in records], {"_id": 1})
            waits = waits or any(doc is not None for doc in kept.values())
            studies.update(dict.fromkeys(study_keys(records)))
            scopes.update(dict.fromkeys(scope_keys(records)))
            months.update(dict.fromkeys(month_keys(day, records)))
            marks.update(dict.fromkeys(m for r in records for m in rollups.study_marks(r)))
        if waits:
            # The day waits (its counters and marks still count a kept record), but the trails drop the
            # records already purged now: they are read by study, and nothing counts from them.
            for records in self._records_by_pages(minutes, {}):
                kept = self._chains.get_many(self._records, [r["_id"] for r in records], {"_id": 1})
                gone = {i for i, doc in kept.items() if doc is None}
                for key in study_keys(r for r in records if r["_id"] in gone):
                    self._rewrite_chain(key, one_of(gone))
            return False
        if lengths:
            self._purge_derived(day, cutoff_ms, lengths, list(studies), list(scopes), list(months), list(marks))
        elif minutes:  # a run killed after the minute pages went: the day's marks are what is left
            self._delete_time_marks(day)
        self._delete(self._marks, [f"jd:{day}"])
        following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
        self._counts.update_one({"_id": RETAINED}, {"$max": {"from": following}}, upsert=True)
        self._counts.update_one({"_id": "bounds", "last": {"$gte": following}}, {"$max": {"first": following}})
        return True

    def _purge_derived(
        self,
        day: str,
        cutoff_ms: int,
        lengths: dict[int, int],
        studies: list[str],
        scopes: list[str],
        months: list[str],
        marks: list[str],
    ) -> None:
        """Everything but the minute pages first: they name the records, so a rerun finds them again.
        `studies`, `scopes`, `months` and `marks` (study marks) were gathered as `purge_day` read the
        day's pages: they are not read a second time."""
        purged = purged_on(day, cutoff_ms, lambda i: self._records.find_one({"_id": i}, {"_id": 1}) is None)
        for key in studies:  # once each, not once per group of records
            self._rewrite_chain(key, purged)
        self._delete(self._marks, marks)
        self._purge_journals(day)
        self._delete(self._counts, counter_ids(day, scopes))
        for month_id in months:
            # The day's figures only: a month document left without days stays (a few bytes a key and
            # month). Deleted, a running consumer that knew it existed moved it with guarded `$inc`s that
            # matched nothing (no upserts in bulk on FerretDB), and the key's later days of that month
            # were never counted.
            self._counts.update_one({"_id": month_id}, {"$unset": {day[8:]: ""}})
        # Each chain from its last page to its first: a run killed part way leaves a chain's first pages,
        # which a rerun reads (it stops at a chain's first missing page), never its last ones alone.
        list(self._chains.executor.map(lambda m: self._delete_chain(f"m:{m}", lengths[m]), lengths))
        self._delete_time_marks(day)

    def _delete_chain(self, key: str, length: int) -> None:
        for n in reversed(range(length)):
            self._pages.delete_one({"_id": f"{key}#{n}"})

    def _delete_time_marks(self, day: str) -> None:
        hours = hours_of(day)
        for marks_of_day in ([f"tm:{h}" for h in hours], [f"th:{h}" for h in hours], [f"td:{hours[0]}"]):
            self._delete(self._marks, marks_of_day)  # the day's mark last: while it stands, a rerun looks

    def _rewrite_chain(self, key: str, purged: Callable[[AuditRecord], bool]) -> None:
        """Each page of the chain holding a purged record is replaced by one without it (same number and
        `h`, so a replay of its batch is still known as one)."""
        n = 0
        while (page := self._pages.find_one({"_id": f"{key}#{n}"})) is not None:
            records = unpack(page)
            left = [r for r in records if not purged(r)]
            if len(left) < len(records):
                self._pages.replace_one({"_id": page["_id"]}, {**page, **pack(left)})
            n += 1

    def _purge_journals(self, day: str) -> None:
        listed = self._marks.find_one({"_id": f"jd:{day}"})
        for bid in (listed or {}).get("b", []):
            journal = self._counts.find_one({"_id": f"j:{bid}"})
            if journal is None:
                continue
            last = max(journal_days(journal), default=day)
            if last <= day and journal.get("applied"):
                self._counts.delete_one({"_id": f"j:{bid}"})
            elif last > day:  # it counted a later day too: it goes with that day
                self._marks.update_one({"_id": f"jd:{last}"}, {"$addToSet": {"b": bid}}, upsert=True)

    def _delete(self, collection: Collection[dict[str, Any]], ids: Sequence[str]) -> None:
        list(self._chains.executor.map(lambda i: collection.delete_one({"_id": i}), ids))

    def close(self) -> None:
        self._chains.executor.shutdown(wait=False)

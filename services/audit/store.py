"""Where audit records live: the AuditStore port and its MongoDB implementation.

Every question is answered from documents read by `_id` (services/audit/README.md, "Storage"):
FerretDB 1.x turns any other filter into a scan of the collection and rewrites a document on every
update, so the store appends immutable pages (services/audit/pages.py) and moves small counters
(services/audit/counters.py) as batches arrive, and never queries by field. Written for the subset
FerretDB 1.x supports: no transactions, TTL indexes or change streams.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, cast

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    PyMongoError,
)

from services.audit import rollups
from services.audit.counters import Counters, SettledMarks, batch_id
from services.audit.keyed_retention import RETAINED
from services.audit.log_entries import packed_form, unpacked
from services.audit.pages import DUPLICATE_KEY, READ_AHEAD, PageChains, unique
from services.audit.queries import (
    AuditSummary,
    Cursor,
    EventFilter,
    EventPage,
    PeriodPurged,
    cursor_after,
    wholly_purged,
)
from services.audit.records import RECORD_FIELDS, AuditRecord, to_datetime, to_epoch_ms
from services.audit.scopes import Scope, ScopeDenied
from services.audit.tamper_log import LOG_SINCE
from services.common.failures import database_away_is_transient
from services.common.mongo import insert_new

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
MAX_DAYS = 400  # an aggregate covers at most this many days
# Pages asked for at once in a study chain's first round: a long trail (the slow ones) is read in one
# round instead of two, for a few cheap misses on a short one.
TRAIL_READ_AHEAD = 6
# ... and in a de-identified copy's chain (named by the study's records: a share of them, fewer pages).
COPY_READ_AHEAD = 4
SCAN_READS = 400  # minutes one events page may walk through when they are empty or filtered out
MINUTES_AT_ONCE = 12
# Listed minutes (known to hold pages) read at first: one busy minute can fill a page of events, so a
# page reads 2, then 4, 8, 12 at once rather than decoding 12 minutes of records to answer 100.
LISTED_AT_FIRST = 2
MONTHLY_FROM = "monthly"  # counts document: the first day the month documents (rollups.month_doc) hold
AFTER_MINUTE = "~"  # sorts after every record id: a cursor "after everything of this minute"


class RecordWriter(Protocol):
    """All the consumer needs."""

    def insert(self, records: Sequence[AuditRecord]) -> int:
        """Store new records; ones already stored (same _id) are left alone. Returns how many were new."""
        ...


class AuditStore(RecordWriter, Protocol):
    def study_trail(self, study_uid: str) -> list[AuditRecord]:
        """Every record of the study as received, plus those of its de-identified copies that carry only
        the remapped UIDs; also finds a de-identified copy by its own study UID. Order unspecified."""
        ...

    def events(self, query: EventFilter, limit: int, after: Cursor | None = None) -> EventPage:
        """Up to `limit` records in (occurred_at, _id) order after `after`; `next_cursor` is None only
        when nothing is left (a page may hold fewer than `limit` when its scan budget ran out)."""
        ...

    def summary(
        self, since: datetime | None = None, until: datetime | None = None, scope: Scope | None = None
    ) -> AuditSummary:
        """Counts over the period; with a scope, of the records that scope sees."""
        ...

    def volumes(
        self, dimension: str, since: datetime | None, until: datetime | None, key: str | None = None
    ) -> list[rollups.VolumeRow]:
        """Per UTC day and key of `dimension` (org, partner or modality), days overlapping the period."""
        ...

    def turnaround(
        self, since: datetime | None, until: datetime | None, partner: str | None = None
    ) -> list[rollups.Turnaround]: ...

    def stage_reasons(
        self, since: datetime | None, until: datetime | None, scope: Scope | None = None
    ) -> list[rollups.StageReasonCount]: ...

    def ping(self) -> bool: ...


@contextmanager
def _unavailable_is_transient() -> Iterator[None]:
    with database_away_is_transient("audit store"):
        yield


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def record_from_document(doc: dict[str, Any]) -> AuditRecord:
    """Also tolerates a client without tz_aware=True: every datetime comes back in UTC."""
    record = {name: _aware(doc.get(name)) for name in RECORD_FIELDS}
    return record  # type: ignore[return-value]


def study_groups(records: Sequence[AuditRecord]) -> dict[str, list[AuditRecord]]:
    """A record joins the chain of every study it names: as received and as delivered (de-identified)."""
    groups: dict[str, list[AuditRecord]] = {}
    for r in records:
        for uid in dict.fromkeys(u for u in (r["study_uid"], r["delivered_study_uid"]) if u):
            groups.setdefault(f"s:{uid}", []).append(r)
    return groups


def minute_groups(records: Sequence[AuditRecord]) -> dict[str, list[AuditRecord]]:
    groups: dict[str, list[AuditRecord]] = {}
    for r in records:
        groups.setdefault(f"m:{to_epoch_ms(r['occurred_at']) // MINUTE_MS * MINUTE_MS}", []).append(r)
    return groups


def study_records(study_uid: str, records: Iterable[AuditRecord]) -> dict[str, AuditRecord]:
    """The first copy of each record naming the study, as received or as delivered."""
    found: dict[str, AuditRecord] = {}
    for r in records:
        if study_uid in (r["study_uid"], r["delivered_study_uid"]):
            found.setdefault(r["_id"], r)
    return found


def copies_of(study_uid: str, found: Mapping[str, AuditRecord]) -> list[str]:
    """The de-identified copies of the study its records name."""
    return sorted({r["delivered_study_uid"] for r in found.values() if r["delivered_study_uid"]} - {study_uid})


def add_copy(found: dict[str, AuditRecord], copy_uid: str, records: Iterable[AuditRecord]) -> None:
    """The records naming the copy as delivered, the first copy of each, unless found already."""
    for r in records:
        if r["delivered_study_uid"] == copy_uid:
            found.setdefault(r["_id"], r)


def trail_of(study_uid: str, chain: Callable[[str, Container[str]], list[AuditRecord]]) -> list[AuditRecord]:
    """The records naming the study, then those naming each de-identified copy of it (one step).
    `chain(uid, known)` gives the records naming `uid`, and may leave out those whose `_id` is in
    `known`: they are found already, and the first copy is kept."""
    found = study_records(study_uid, chain(study_uid, ()))
    for uid in copies_of(study_uid, found):
        add_copy(found, uid, chain(uid, found.keys()))
    return list(found.values())


def matches(query: EventFilter, r: AuditRecord) -> bool:
    return (
        (query.org is None or r["source_org"] == query.org)
        and (query.partner is None or query.partner in (r["partner_id"], r.get("requested_partner_id")))
        and (query.event_type is None or r["event_type"] == query.event_type)
        and (query.since is None or r["occurred_at"] >= query.since)
        and (query.until is None or r["occurred_at"] < query.until)
    )


def day_range(since: datetime | None, until: datetime | None, bounds: tuple[str, str] | None) -> list[str]:
    """The UTC days overlapping [since, until); open ends stop at the first and last day recorded."""
    if bounds is None and (since is None or until is None):
        return []
    first = since.astimezone(UTC).date() if since else date.fromisoformat(bounds[0])  # type: ignore[index]
    last = (until - timedelta(milliseconds=1)).astimezone(UTC).date() if until else date.fromisoformat(bounds[1])  # type: ignore[index]
    if bounds is not None:
        first, last = max(first, date.fromisoformat(bounds[0])), min(last, date.fromisoformat(bounds[1]))
    if (last - first).days >= MAX_DAYS:
        first = last - timedelta(days=MAX_DAYS - 1)
    return list(rollups.days_between(first, last))


@dataclass
class _Scan:
    reads: int
    position: int
    done: bool = False


def _as_stored(record: AuditRecord, stored: Mapping[str, Any] | None) -> AuditRecord:
    """The record at the time its stored copy has (None: it was new)."""
    if stored is None:
        return record
    at = unpacked(stored).get("occurred_at")
    return cast(AuditRecord, {**record, "occurred_at": at}) if isinstance(at, datetime) else record


class MongoAuditStore:
    """The configured collection N holds the records (`_id` = record id, plus `_b`: the batch that
    counted it), as the tamper-evident log's verification and retention expect; beside it `N_pages`
    (study and minute pages), `N_marks` (counted studies, days and hours with pages) and `N_counts`
    (counters and journals)."""

    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        db: Database[dict[str, Any]] = collection.database
        self._names = [collection.name, *(f"{collection.name}_{n}" for n in ("pages", "marks", "counts"))]
        self._records, self._pages, self._marks, self._counts = (db[n] for n in self._names)
        self._db = db
        self._chains = PageChains(self._pages)
        self._counters = Counters(self._counts, self._chains.executor)
        self._settled = SettledMarks()
        self._time_marked: set[str] = set()
        self._minutes_marked: set[int] = set()
        self._bounds: tuple[str, str] | None = None
        self._monthly_from: str | None = None

    def ensure_indexes(self) -> None:
        """Creates the collections (idempotent; call once at start-up). No secondary index is needed:
        every read is by `_id`. Creating them first matters on FerretDB 1.24, where an upsert into a
        collection that does not exist yet can hang the server."""
        existing = set(self._db.list_collection_names())
        for name in self._names:
            if name not in existing:
                try:
                    self._db.create_collection(name)
                except PyMongoError as exc:  # created meanwhile by another replica
                    if "already exists" not in str(exc):
                        raise
        # Month documents hold every day from `from` on: all of them on a new store, from tomorrow on one
        # that counted before they existed (earlier days are read from the daily documents).
        start = "0000-01-01" if self._counts.find_one({"_id": "bounds"}) is None else (
            (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        )  # fmt: skip
        insert_new(self._counts, [{"_id": MONTHLY_FROM, "from": start}])

    def insert(self, records: Sequence[AuditRecord]) -> int:
        return len(self.insert_new(records))

    def insert_new(self, records: Sequence[AuditRecord], log_since: int | None = None) -> set[str]:
        """`insert`, returning the ids of the records this call inserted. `log_since`, the tamper-evident
        log's next leaf index read before the call, is kept in each record inserted (`LOG_SINCE`): the
        log's claim that it is not logged before that index (tamper_log.StoreClaims)."""
        if not records:
            return set()
        batch = unique(records)
        with _unavailable_is_transient():
            bid = batch_id(r["_id"] for r in batch)
            studies = list(dict.fromkeys(m for r in batch for m in rollups.study_marks(r)))
            docs = [packed_form(r) for r in batch]
            if log_since is not None:
                for doc in docs:
                    doc[LOG_SINCE] = log_since
            stored: dict[str, dict[str, Any]] = {}
            new, ours = self._counters.claim(bid, self._records, docs, found=stored)
            # Pages of the records this batch counts, before they are counted (a record is counted only
            # once it can be found), each at the time it was stored with: a stage's replay after a crash
            # (same ids, so the same batch, later times) was paged in its own minutes too, and listed
            # twice by /audit/events and the exports; in the stored one's minute it is the same page, or
            # a second copy there that the listing's `unique` drops. A batch that stopped before counting
            # leaves its records to the next batch holding them (`claim`), which pages them.
            owned = [_as_stored(r, stored.get(r["_id"])) for r in batch if r["_id"] in ours]
            self._chains.append({**study_groups(owned), **minute_groups(owned)})
            self._mark_time(owned)
            unsettled, ours_studies = self._settled.split(bid, studies)
            owners: dict[str, str] = {}
            ours_studies |= self._counters.claim(bid, self._marks, [{"_id": m} for m in unsettled], owners)[1]
            deltas = rollups.deltas_for(
                [r for r in batch if r["_id"] in ours], [m for m in studies if m in ours_studies]
            )
            if deltas:
                self._counters.record(bid, deltas)
                self._counters.apply(bid, deltas)
            self._settled.add(owners)  # this batch's journal is applied (or it counts none of them)
        return new

    def log_since(self, record_id: str) -> int | None:
        """The `log_since` a stored record was inserted with (None: without one, or not stored)."""
        with _unavailable_is_transient():
            doc = self._records.find_one({"_id": record_id}, {LOG_SINCE: 1})
        value = (doc or {}).get(LOG_SINCE)
        return int(value) if value is not None else None

    def _mark_time(self, batch: Sequence[AuditRecord]) -> None:
        """Which days and hours hold minute pages, so a reader skips empty ones; which minutes of an hour
        do (`tm:<hour ms>`, `m`: minutes into the hour); and the first/last day."""
        wanted: list[str] = []
        minutes: dict[int, set[int]] = {}
        for r in batch:
            ms = to_epoch_ms(r["occurred_at"])
            hour = ms // HOUR_MS * HOUR_MS
            for mark in (f"td:{ms // DAY_MS * DAY_MS}", f"th:{hour}"):
                if mark not in self._time_marked and mark not in wanted:
                    wanted.append(mark)
            minute = ms // MINUTE_MS * MINUTE_MS
            if minute not in self._minutes_marked:
                minutes.setdefault(hour, set()).add((minute - hour) // MINUTE_MS)
        for hour, new in minutes.items():  # a few hours per batch; marked only once the write succeeded
            update = {"$addToSet": {"m": {"$each": sorted(new)}}}
            try:
                self._marks.update_one({"_id": f"tm:{hour}"}, update, upsert=True)
            except DuplicateKeyError:  # FerretDB: two upserts of one new document raced; it exists now
                self._marks.update_one({"_id": f"tm:{hour}"}, update)
            self._minutes_marked.update(hour + m * MINUTE_MS for m in new)
        if len(self._minutes_marked) > 200_000:
            self._minutes_marked.clear()
        if wanted:
            try:
                self._marks.insert_many([{"_id": m} for m in wanted], ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                    raise
            days = sorted(rollups.day_of(to_datetime(int(m[3:]))) for m in wanted if m.startswith("td:"))
            if days:
                self._counts.update_one(
                    {"_id": "bounds"}, {"$min": {"first": days[0]}, "$max": {"last": days[-1]}}, upsert=True
                )
            # Known only once written, bounds included: marked before, a write that failed (the database
            # away) was skipped by the batch's retry, and its hour and day stayed hidden from every listing.
            self._time_marked.update(wanted)
        if len(self._time_marked) > 100_000:
            self._time_marked.clear()

    def study_trail(self, study_uid: str) -> list[AuditRecord]:
        """`trail_of` over the study chains, with each copy's chain asked for as soon as a page of the
        study names it, alongside the rest of the study's own chain, not after it; a copy's pages leave
        out records already found (the study's own pages seldom repeat one: they are parsed whole)."""
        key = f"s:{study_uid}"
        known: set[str] = set()
        looked_at = 0  # records of the study's chain `follow` has seen: it is called after every page

        def follow(read: Mapping[str, list[AuditRecord]]) -> list[str]:
            nonlocal looked_at
            named = study_records(study_uid, read[key][looked_at:])
            looked_at = len(read[key])
            known.update(named)
            return [f"s:{uid}" for uid in copies_of(study_uid, named)]

        with _unavailable_is_transient():
            chains = self._chains.read_many([key], TRAIL_READ_AHEAD, (), follow, COPY_READ_AHEAD, known)
        found = study_records(study_uid, chains[key])
        for uid in copies_of(study_uid, found):
            add_copy(found, uid, chains[f"s:{uid}"])
        return list(found.values())

    def _indexed_from(self) -> str:
        """The first day whose month documents and minute lists are complete (MONTHLY_FROM)."""
        if self._monthly_from is None:
            doc = self._counts.find_one({"_id": MONTHLY_FROM})
            self._monthly_from = str((doc or {}).get("from", "9999-12-31"))
        return self._monthly_from

    def _refuse_purged(self, until: datetime | None) -> None:
        """A period ending before the first retained day is gone, not empty: PeriodPurged (HTTP 410)."""
        if until is None:
            return
        doc = self._counts.find_one({"_id": RETAINED})
        if doc is not None and wholly_purged(until, str(doc["from"])):
            raise PeriodPurged(str(doc["from"]))

    def _day_bounds(self) -> tuple[str, str] | None:
        doc = self._counts.find_one({"_id": "bounds"})
        return (str(doc["first"]), str(doc["last"])) if doc else None

    def _minutes(self, start_ms: int, end_ms: int, scan: _Scan) -> Iterator[tuple[int, list[AuditRecord]]]:
        """(minute start, its records) for minutes overlapping [start_ms, end_ms), skipping days and hours
        without pages, up to MINUTES_AT_ONCE minutes read concurrently (listed ones LISTED_AT_FIRST first,
        twice as many each time after); stops when the scan's reads are spent (`scan.position`: where it
        stopped)."""
        minute = start_ms // MINUTE_MS * MINUTE_MS
        listed_at_once = LISTED_AT_FIRST
        checked_hour = -1
        listed: set[int] | None = None  # the hour's minutes with pages, when its `tm` mark can say
        indexed_from = self._indexed_from()
        while minute < end_ms and scan.reads > 0:
            hour = minute // HOUR_MS * HOUR_MS
            if hour != checked_hour:
                checked_hour = hour
                day = minute // DAY_MS * DAY_MS
                marks = self._chains.get_many(self._marks, [f"td:{day}", f"th:{hour}", f"tm:{hour}"])
                scan.reads -= 1
                if marks[f"td:{day}"] is None:
                    minute = scan.position = day + DAY_MS
                    continue
                if marks[f"th:{hour}"] is None:
                    minute = scan.position = hour + HOUR_MS
                    continue
                listing = marks[f"tm:{hour}"]
                # Trusted for the days whose every record was stored by a version that keeps the lists.
                trusted = listing is not None and rollups.day_of(to_datetime(hour)) >= indexed_from
                listed = {hour + int(m) * MINUTE_MS for m in listing["m"]} if trusted and listing else None
            candidates = range(minute, min(end_ms, hour + HOUR_MS), MINUTE_MS)
            at_once = MINUTES_AT_ONCE if listed is None else listed_at_once
            window = [m for m in candidates if listed is None or m in listed][:at_once]
            if not window:  # none of the hour's listed minutes is left
                minute = scan.position = candidates.stop
                continue
            # Most minutes of a sparse period are empty: one read each first, more only for those with pages.
            chains = self._chains.read_many([f"m:{m}" for m in window], first_round=1 if listed is None else READ_AHEAD)
            scan.reads -= len(window)
            listed_at_once = min(2 * listed_at_once, MINUTES_AT_ONCE) if listed is not None else listed_at_once
            for m in window:
                scan.position = m + MINUTE_MS
                yield m, chains[f"m:{m}"]
            minute = window[-1] + MINUTE_MS
        scan.done = minute >= end_ms

    def events(self, query: EventFilter, limit: int, after: Cursor | None = None) -> EventPage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with _unavailable_is_transient():
            self._refuse_purged(query.until)
            bounds = self._day_bounds()
            if bounds is None:
                return EventPage([], None)
            # Never before the first day recorded: a `since` of year 1 paged through ~1,850 empty pages.
            first_ms = to_epoch_ms(datetime.fromisoformat(bounds[0]).replace(tzinfo=UTC))
            starts = [to_epoch_ms(t) for t in (query.since, after.occurred_at if after else None) if t is not None]
            start_ms = max([*starts, first_ms])
            last_ms = to_epoch_ms(datetime.fromisoformat(bounds[1]).replace(tzinfo=UTC)) + DAY_MS
            end_ms = min(to_epoch_ms(query.until), last_ms) if query.until is not None else last_ms
            found: list[AuditRecord] = []
            scan = _Scan(SCAN_READS, start_ms)
            for _minute, records in self._minutes(start_ms, end_ms, scan):
                picked = [
                    r
                    for r in unique(records)
                    if matches(query, r)
                    and (after is None or (r["occurred_at"], r["_id"]) > (after.occurred_at, after.record_id))
                ]
                found.extend(sorted(picked, key=lambda r: (r["occurred_at"], r["_id"])))
                if len(found) > limit:
                    return EventPage(found[:limit], cursor_after(found[limit - 1]))
            if scan.done:
                return EventPage(found, None)
            # Out of reads before the period's end: the next page goes on after what was scanned.
            return EventPage(found, Cursor(to_datetime(scan.position - 1), AFTER_MINUTE))

    def _records_between(self, start: datetime, end: datetime) -> list[AuditRecord]:
        scan = _Scan(2 * 24 * 60, to_epoch_ms(start))
        out = [r for _m, records in self._minutes(to_epoch_ms(start), to_epoch_ms(end), scan) for r in records]
        return [r for r in unique(out) if start <= r["occurred_at"] < end]

    def _scoped(self, scope: Scope | None, days: list[str]) -> str | None:
        """The counters' name of a scope (None: everything). Scoped counts are kept from the day the
        month documents are (`monthly`): a period starting earlier is refused, not answered short."""
        if scope is None or scope.everything:
            return None
        if days and days[0] < self._indexed_from():
            raise ScopeDenied(f"figures for {scope} are kept from {self._indexed_from()} on; ask from that day")
        return str(scope)

    def summary(
        self, since: datetime | None = None, until: datetime | None = None, scope: Scope | None = None
    ) -> AuditSummary:
        with _unavailable_is_transient():
            self._refuse_purged(until)
            days = day_range(since, until, self._day_bounds())
            key = self._scoped(scope, days)
            whole: list[str] = []
            docs: dict[str, dict[str, Any]] = {}
            for day in days:
                day_start = datetime.fromisoformat(day).replace(tzinfo=UTC)
                day_end = day_start + timedelta(days=1)
                if (since is None or since <= day_start) and (until is None or day_end <= until):
                    whole.append(day)
                else:  # an edge day: count its records in the period from its minute pages
                    part = self._records_between(max(since or day_start, day_start), min(until or day_end, day_end))
                    part = [r for r in part if scope is None or scope.admits(r)]
                    rollups.apply(docs, rollups.deltas_for(part, []))
            ids = [rollups.summary_doc(d, key) for d in whole]
            counts = rollups.summary_counts(self._prefetch(ids).get, whole, key)
            edge = rollups.summary_counts(docs.get, days, key)
        return summary_from_counts(counts, edge)

    def volumes(
        self, dimension: str, since: datetime | None, until: datetime | None, key: str | None = None
    ) -> list[rollups.VolumeRow]:
        with _unavailable_is_transient():
            self._refuse_purged(until)
            if key is None or dimension not in rollups.MONTHLY:
                days = day_range(since, until, self._day_bounds())
                ids = rollups.volume_ids(dimension, days, key)
                return rollups.volumes(self._prefetch(ids).get, dimension, days, key)
            # One key: its month documents, read with `bounds` (and the month documents' start, once).
            wanted = day_range(since, until, None) if since is not None and until is not None else []
            ids = ["bounds", *rollups.month_ids(dimension, wanted, key)]
            if self._monthly_from is None:
                ids.append(MONTHLY_FROM)
            docs = self._prefetch(ids)
            if self._monthly_from is None:
                self._monthly_from = str((docs[MONTHLY_FROM] or {}).get("from", "9999-12-31"))
            bounds = docs["bounds"]
            days = day_range(since, until, (str(bounds["first"]), str(bounds["last"])) if bounds else None)
            monthly = [d for d in days if d >= self._monthly_from]
            missing = [i for i in rollups.month_ids(dimension, monthly, key) if i not in docs]
            docs.update(self._prefetch(missing) if missing else {})
            daily = [d for d in days if d < self._monthly_from]
            rows = rollups.volumes(self._prefetch(rollups.volume_ids(dimension, daily, key)).get, dimension, daily, key)
            return rows + rollups.month_volumes(docs.get, dimension, monthly, key)

    def turnaround(
        self, since: datetime | None, until: datetime | None, partner: str | None = None
    ) -> list[rollups.Turnaround]:
        with _unavailable_is_transient():
            self._refuse_purged(until)
            days = day_range(since, until, self._day_bounds())
            return rollups.turnaround(self._prefetch(rollups.turnaround_ids(days, partner)).get, days, partner)

    def stage_reasons(
        self, since: datetime | None, until: datetime | None, scope: Scope | None = None
    ) -> list[rollups.StageReasonCount]:
        with _unavailable_is_transient():
            self._refuse_purged(until)
            days = day_range(since, until, self._day_bounds())
            key = self._scoped(scope, days)
            return rollups.stage_reasons(self._prefetch([rollups.summary_doc(d, key) for d in days]).get, days, key)

    def _prefetch(self, ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """Counter documents, read concurrently: a month is 30 `_id` reads in about the time of a few."""
        return self._chains.get_many(self._counts, ids)

    def ping(self) -> bool:
        try:
            self._db.command("ping")
        except PyMongoError:
            return False
        return True


def summary_from_counts(*parts: dict[str, dict[str, int]]) -> AuditSummary:
    merged: dict[str, dict[str, int]] = {"t": {}, "dp": {}, "fp": {}, "qr": {}, "ds": {}}
    for part in parts:
        for prefix, counts in part.items():
            for name, n in counts.items():
                merged[prefix][name] = merged[prefix].get(name, 0) + n
    return AuditSummary(
        events_by_type=dict(sorted(merged["t"].items())),
        delivered_by_partner=dict(sorted(merged["dp"].items())),
        failed_by_partner=dict(sorted(merged["fp"].items())),
        quarantined_by_reason=dict(sorted(merged["qr"].items())),
        dead_letters_by_stage=dict(sorted(merged["ds"].items())),
    )

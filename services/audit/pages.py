"""Pages: immutable documents holding the records of one batch that share a key (a study, a minute).

A key's pages form a chain `<key>#0`, `<key>#1`, ... with no gaps, so a reader walks it with `_id`
lookups until the first miss, and a writer appends with plain inserts (the only fast writes on
FerretDB, which scans for anything but an `_id` and rewrites a document on every update). A page
holds its records as one compressed blob: the server sees a few fields, not thousands, which keeps
inserts and reads cheap, and only whole pages are ever asked for.

The blob (`f`: 2) is a zlib-compressed JSON array, one line per record: the record as an answer writes it
(every AuditRecord field in order, `_id` included, times as UTC `Z`). Reading a page is a decompress, one
orjson parse and three times parsed per record, well under half of what decoding the same records from
BSON costs (README, "Measured"); and a record read back carries its line (`StoredRecord.json`), which
the answers copy instead of writing the record again. Pages written before (no `f`) hold one BSON
document `{"r": [record, ...]}` and are read as such, so a chain may hold both.

A page carries `h`, the hash of its record ids. Appending finds the next free number from a cache,
or by probing after a restart; a page with the same `h` already in the chain means the batch was
written before (a replay) and nothing is added. A replay in a different batch composition adds a
page that repeats some records: readers drop repeats by `_id`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, get_type_hints

import bson
import orjson
from bson.codec_options import CodecOptions
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.audit.records import RECORD_FIELDS, AuditRecord, truncate_ms

READ_AHEAD = 3
# Pages asked for past the last one found of a chain that is still going (more for a long chain).
LOOK_AHEAD = 2
READERS = 12
PAGE_RECORDS = 500  # a study's share of one batch rarely exceeds this; longer ones take several pages
DUPLICATE_KEY = 11000
_CODEC: CodecOptions = CodecOptions(tz_aware=True, tzinfo=UTC)
_CACHE_LIMIT = 200_000
# zlib level of a page. Level 2 (deflate's fast match, longer chains than 1) writes a page ~20% larger
# than 6 (~12% smaller than 1) in less than half of 6's time: the bench's records, pages of one batch of
# 2,000, 4.4 µs a record against 10.1 at 6 and 4.7 at 1; reading costs the same (~1.8 µs a record).
# A page is written once and read by the few trails that ask for it; every record is compressed in two
# or three pages, so the writer's cost is what counts (README, "Measured").
COMPRESSION = 2


def records_hash(records: Iterable[AuditRecord]) -> str:
    return hashlib.sha256("\n".join(sorted(r["_id"] for r in records)).encode()).hexdigest()[:24]


JSON_LINES = 2  # `f` of a page whose blob is JSON, a record a line; a page without `f` holds BSON
_TIMES = tuple(
    name for name, kind in get_type_hints(AuditRecord).items() if datetime in getattr(kind, "__args__", (kind,))
)
_JSON = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


class StoredRecord(dict[str, Any]):
    """A record read from a JSON page, with the page's line for it: `json` is exactly what
    `record_json` writes for the record (read-only use: nothing changes a record after reading). Made
    as `StoredRecord(fields)`, then `json` set: a Python `__init__` would double the cost of a record."""

    __slots__ = ("json",)
    json: bytes


def record_json(record: Mapping[str, Any]) -> bytes:
    """Every AuditRecord field in AuditRecord's order (None for a missing one), times in UTC as BSON
    keeps them (milliseconds; a naive time taken as UTC), written by orjson as AuditEvent's JSON is."""
    row = record if tuple(record) == RECORD_FIELDS else {name: record.get(name) for name in RECORD_FIELDS}
    for name in _TIMES:
        value = row[name]
        if value is not None and (value.microsecond % 1000 or value.tzinfo is not UTC):
            row = {**row, name: truncate_ms(value).astimezone(UTC)}
    return orjson.dumps(row, option=_JSON)


def pack(records: Sequence[AuditRecord], lines: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A page's payload fields: the records as a JSON array, a record a line (orjson never writes a raw
    newline, so `,\n` only ever separates records). `lines` keeps each record's line by `_id` across the
    pages of one batch (a record goes to two or three)."""
    known: dict[str, bytes] = {} if lines is None else lines
    out: list[bytes] = []
    for r in records:
        line = known.get(r["_id"])
        if line is None:
            line = known[r["_id"]] = record_json(r)
        out.append(line)
    return {"f": JSON_LINES, "b": zlib.compress(b"[" + b",\n".join(out) + b"]", COMPRESSION)}


def unpack(page: Mapping[str, Any], known: Container[str] = (), data: bytes | None = None) -> list[AuditRecord]:
    """The records of a page of either format; those whose `_id` is in `known` may be left out (a
    reader that already holds them, and keeps the first copy, need not parse them again). `data`: the
    page's blob decompressed, when the caller has it already."""
    blob = zlib.decompress(page["b"]) if data is None else data
    if page.get("f") == JSON_LINES:
        return _from_json(blob, known)
    docs = bson.decode(blob, codec_options=_CODEC)["r"]
    return [{name: doc.get(name) for name in RECORD_FIELDS} for doc in docs]  # type: ignore[misc]


_ID_AT = len(b'{"_id":"')


def _line_id(line: bytes) -> str | None:
    """The `_id` at the head of a line, read without parsing it; None when it holds an escape."""
    raw = line[_ID_AT : line.index(b'"', _ID_AT)]
    return None if b"\\" in raw else raw.decode()


def _from_json(data: bytes, known: Container[str]) -> list[AuditRecord]:
    lines = data[1:-1].split(b",\n") if len(data) > 2 else []
    if known:
        kept = [line for line in lines if _line_id(line) not in known]
        if len(kept) < len(lines):
            lines, data = kept, b"[" + b",".join(kept) + b"]"
    rows = orjson.loads(data)
    parse = datetime.fromisoformat
    out = []
    for row, line in zip(rows, lines, strict=True):
        for name in _TIMES:
            value = row[name]
            if value is not None:
                row[name] = parse(value)
        record = StoredRecord(row)
        record.json = line
        out.append(record)
    return out  # type: ignore[return-value]


def chunks(records: Sequence[AuditRecord]) -> list[Sequence[AuditRecord]]:
    return [records[i : i + PAGE_RECORDS] for i in range(0, len(records), PAGE_RECORDS)]


def unique(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """The first copy of each record (replays may have written one twice)."""
    seen: dict[str, AuditRecord] = {}
    for r in records:
        seen.setdefault(r["_id"], r)
    return list(seen.values())


class PageChains:
    """Appends pages to chains and reads chains back (one collection; chain keys carry their kind)."""

    def __init__(self, pages: Collection[dict[str, Any]]) -> None:
        self._pages = pages
        self._next: dict[str, int] = {}  # chain key -> the first number not known to be taken
        self._last: dict[str, list[str]] = {}  # chain key -> the hashes of the pages it last appended
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="audit-pages")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads reading pages: other concurrent `_id` work of the store may use them too."""
        return self._readers

    def append(self, groups: dict[str, list[AuditRecord]]) -> None:
        """One page per key (more for a long group), written with one unordered insert."""
        docs: list[dict[str, Any]] = []
        numbers: dict[str, int] = {}
        lines: dict[str, bytes] = {}
        hashes: dict[str, list[str]] = {}
        for key, records in groups.items():
            parts = chunks(records)
            hashes[key] = [records_hash(part) for part in parts]
            if hashes[key] == self._last.get(key):
                continue  # a batch retried after a later step failed (a sink away): its pages are written
            n = self._next.get(key, 0)
            for part, digest in zip(parts, hashes[key], strict=True):
                docs.append({"_id": f"{key}#{n}", "k": key, "n": n, "h": digest, **pack(part, lines)})
                n += 1
            numbers[key] = n
        if not docs:
            return
        failed: list[dict[str, Any]] = []
        try:
            self._pages.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            failed = [docs[e["index"]] for e in errors]
        if len(self._next) > _CACHE_LIMIT:
            self._next.clear()
            self._last.clear()
        self._next.update(numbers)
        for doc in failed:
            self._settle(doc)
        # Only once every page is in: remembered before a `_settle` that failed (the database away),
        # the retry skipped the chain and its records were never paged.
        self._last.update(hashes)

    def _settle(self, doc: dict[str, Any]) -> None:
        """The number was taken: by this very page (a replay), or by another writer's page (try the next)."""
        key, n = doc["k"], doc["n"]
        while True:
            found = self._pages.find_one({"_id": f"{key}#{n}"}, {"h": 1})
            if found is None:
                try:
                    self._pages.insert_one({**doc, "_id": f"{key}#{n}", "n": n})
                except DuplicateKeyError:
                    continue  # another writer took it between the read and the insert
                break
            if found.get("h") == doc["h"]:
                break
            n += 1
        self._next[key] = max(self._next.get(key, 0), n + 1)

    def read(self, key: str, known: Container[str] = (), first_round: int = READ_AHEAD) -> list[AuditRecord]:
        return self.read_many([key], first_round, known)[key]

    def read_many(
        self,
        keys: Sequence[str],
        first_round: int = READ_AHEAD,
        known: Container[str] = (),
        follow: Callable[[Mapping[str, list[AuditRecord]]], Iterable[str]] | None = None,
        follow_round: int | None = None,
        followed_known: Container[str] | None = None,
    ) -> dict[str, list[AuditRecord]]:
        """Each chain's records (those with an `_id` in `known` may be left out). Pages are asked for
        concurrently: `first_round` per chain at first, then, as each page is found, enough that the
        pages asked for reach LOOK_AHEAD (or a third of those found, for a long chain) past it. So a
        dozen short chains cost about one round trip, a long one keeps a few pages on their way, and a
        chain's end costs a few misses (each a round trip of the servers' work), not a whole round of
        them; pages asked for after a chain's first miss are dropped if not yet sent. Pages are parsed
        in the order asked, each as soon as it is in, while the later ones are still on their way (the
        parse is Python's work, the read the servers'). `follow`, called after each page with the
        records read so far, names chains to read as well: they are asked for at once, `follow_round`
        pages (default `first_round`) at first, not after the round, and records of theirs with an
        `_id` in `followed_known` (default `known`) may be left out. A page is decompressed by the
        thread that read it (zlib lets other threads run meanwhile), so on two cores the next page's
        decompress overlaps this one's parse."""
        found: dict[str, list[AuditRecord]] = {}
        followed: set[str] = set()
        asked: deque[tuple[str, int, Future[tuple[dict[str, Any], bytes] | None]]] = deque()
        upto: dict[str, int] = {}  # chain -> the first page number not asked for yet
        ended: set[str] = set()

        def ask(key: str, stop: int) -> None:
            start = upto.get(key, 0)
            if stop > start:
                upto[key] = stop
                asked.extend((key, i, self._readers.submit(self._get_blob, f"{key}#{i}")) for i in range(start, stop))

        for key in dict.fromkeys(keys):
            found[key] = []
            ask(key, first_round)
        while asked:
            key, i, page = asked.popleft()
            if key in ended:
                continue
            got = page.result()
            if got is None:
                ended.add(key)
                for other, _n, later in asked:
                    if other == key:
                        later.cancel()  # past the chain's end: not sent if a reader has not taken it yet
                continue
            skip = followed_known if key in followed and followed_known is not None else known
            found[key].extend(unpack(got[0], skip, got[1]))
            ask(key, i + 1 + max(LOOK_AHEAD, (i + 1) // 3))
            for k in follow(found) if follow is not None else ():
                if k not in found:
                    found[k] = []
                    followed.add(k)
                    ask(k, first_round if follow_round is None else follow_round)
        return found

    def get_many(
        self, collection: Collection[dict[str, Any]], ids: Sequence[str], projection: Mapping[str, Any] | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """Documents by `_id` (their `projection`), asked for concurrently (FerretDB does not push `$in` down)."""
        found = self._readers.map(lambda i: collection.find_one({"_id": i}, projection), ids)
        return dict(zip(ids, found, strict=True))

    def _get(self, doc_id: str) -> dict[str, Any] | None:
        return self._pages.find_one({"_id": doc_id}, {"b": 1, "f": 1})

    def _get_blob(self, doc_id: str) -> tuple[dict[str, Any], bytes] | None:
        """The page and its blob decompressed (None: no such page)."""
        doc = self._get(doc_id)
        return None if doc is None else (doc, zlib.decompress(doc["b"]))

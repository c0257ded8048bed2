"""Pages: immutable documents holding the records of one batch that share a key (a study, a minute).

A key's pages form a chain `<key>#0`, `<key>#1`, ... with no gaps, so a reader walks it with `_id`
lookups until the first miss, and a writer appends with plain inserts (the only fast writes on
FerretDB, which scans for anything but an `_id` and rewrites a document on every update). A page
holds its records as one compressed BSON blob: the server sees four fields, not thousands, which
keeps inserts and reads cheap, and only whole pages are ever asked for.

A page carries `h`, the hash of its record ids. Appending finds the next free number from a cache,
or by probing after a restart; a page with the same `h` already in the chain means the batch was
written before (a replay) and nothing is added. A replay in a different batch composition adds a
page that repeats some records: readers drop repeats by `_id`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.audit.log_entries import stored_form
from services.audit.records import RECORD_FIELDS, AuditRecord

READ_AHEAD = 3
READERS = 12
PAGE_RECORDS = 500  # a study's share of one batch rarely exceeds this; longer ones take several pages
DUPLICATE_KEY = 11000
_CODEC: CodecOptions = CodecOptions(tz_aware=True, tzinfo=UTC)
_CACHE_LIMIT = 200_000


def records_hash(records: Iterable[AuditRecord]) -> str:
    return hashlib.sha256("\n".join(sorted(r["_id"] for r in records)).encode()).hexdigest()[:24]


def pack(records: Sequence[AuditRecord]) -> bytes:
    return zlib.compress(bson.encode({"r": [stored_form(r) for r in records]}), 1)


def unpack(blob: bytes) -> list[AuditRecord]:
    docs = bson.decode(zlib.decompress(blob), codec_options=_CODEC)["r"]
    return [{name: doc.get(name) for name in RECORD_FIELDS} for doc in docs]  # type: ignore[misc]


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
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="audit-pages")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads reading pages: other concurrent `_id` work of the store may use them too."""
        return self._readers

    def append(self, groups: dict[str, list[AuditRecord]]) -> None:
        """One page per key (more for a long group), written with one unordered insert."""
        docs: list[dict[str, Any]] = []
        numbers: dict[str, int] = {}
        for key, records in groups.items():
            n = self._next.get(key, 0)
            for part in chunks(records):
                docs.append({"_id": f"{key}#{n}", "k": key, "n": n, "h": records_hash(part), "b": pack(part)})
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
        self._next.update(numbers)
        for doc in failed:
            self._settle(doc)

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

    def read(self, key: str) -> list[AuditRecord]:
        return self.read_many([key])[key]

    def read_many(self, keys: Sequence[str], first_round: int = READ_AHEAD) -> dict[str, list[AuditRecord]]:
        """Each chain's records. Pages are asked for concurrently, READ_AHEAD per chain in the first round
        and twice as many in each next one, so a dozen short chains cost about one round trip, and a long
        chain of n pages about log2(n)."""
        found: dict[str, list[AuditRecord]] = {k: [] for k in keys}
        open_keys, n, ahead = list(dict.fromkeys(keys)), 0, first_round
        while open_keys:
            ids = [f"{k}#{i}" for k in open_keys for i in range(n, n + ahead)]
            docs = dict(zip(ids, self._readers.map(self._get, ids), strict=True))
            still: list[str] = []
            for k in open_keys:
                for i in range(n, n + ahead):
                    doc = docs[f"{k}#{i}"]
                    if doc is None:
                        break
                    found[k].extend(unpack(doc["b"]))
                else:
                    still.append(k)
            # A chain that is still going is probably long: ask for twice as many next time.
            open_keys, n, ahead = still, n + ahead, min(ahead * 2, READERS)
        return found

    def get_many(self, collection: Collection[dict[str, Any]], ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Documents by `_id`, asked for concurrently (FerretDB does not push `$in` down)."""
        return dict(zip(ids, self._readers.map(lambda i: collection.find_one({"_id": i}), ids), strict=True))

    def _get(self, doc_id: str) -> dict[str, Any] | None:
        return self._pages.find_one({"_id": doc_id}, {"b": 1})

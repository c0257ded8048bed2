"""Counters that count every record once, however often it arrives (services/audit/rollups.py says what
is counted where).

`$inc` alone would count a replayed batch twice, so a batch (id: hash of its record ids) goes through:

1. **Marks**: the record itself (in the records collection, `_id` = record id) and one tiny document
   per study of a key and day, inserted with `_b` = the batch. Inserted now means "count it here". A
   mark that already exists is counted here only when it is this batch's (a replay of the same
   batch), or when the batch that owns it died before writing its journal: then this batch takes it
   over with a compare-and-set on `_b`.
2. **Journal** `j:<batch>`: the batch's deltas, written before any counter moves.
3. **Counters**: each `$inc` is guarded by the batch id in one of 32 slots of the counter document
   (`g.<slot>`), so applying a journal twice moves each counter once; then the journal is marked applied.
   A batch that meets marks of an owner whose journal is not marked applied finishes that journal first
   (the owner died half-way).

The one race left: a consumer that lost its partitions but is still writing (a zombie) while its
successor takes its marks over can count those records twice; the bus's rebalance makes that window
short. Slots are reused: a journal left half-applied for 32 later batches on the same counter could
move that counter twice when finished.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from contextlib import suppress
from typing import Any

import bson
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.audit.pages import DUPLICATE_KEY
from services.audit.rollups import Deltas
from services.common.mongo import bulk_write_chunked, insert_new

SLOTS = 32
CLAIM_CHUNK = 500  # marks per insert: a batch's are sent as several inserts at once (FerretDB runs them side by side)
_KNOWN_LIMIT = 100_000


def batch_id(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:24]


def _slot(bid: str) -> str:
    return f"g.{int(bid[:6], 16) % SLOTS}"


class Counters:
    """`executor` (optional) sends a batch's marks as concurrent inserts."""

    def __init__(self, counts: Collection[dict[str, Any]], executor: Executor | None = None) -> None:
        self._counts = counts
        self._executor = executor
        self._known: set[str] = set()  # counter documents known to exist

    def _insert_marks(self, into: Collection[dict[str, Any]], docs: list[dict[str, Any]]) -> list[int]:
        """Positions of the marks that were already there."""
        parts = [docs[i : i + CLAIM_CHUNK] for i in range(0, len(docs), CLAIM_CHUNK)]

        def insert(part: list[dict[str, Any]]) -> set[int]:
            try:
                into.insert_many(part, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if exc.details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                return {int(e["index"]) for e in errors}
            return set()

        runs = self._executor.map(insert, parts) if self._executor and len(parts) > 1 else map(insert, parts)
        return [n * CLAIM_CHUNK + i for n, present in enumerate(runs) for i in sorted(present)]

    def claim(
        self,
        bid: str,
        into: Collection[dict[str, Any]],
        docs: Sequence[dict[str, Any]],
        owners: dict[str, str] | None = None,
        found: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[set[str], set[str]]:
        """Inserts `docs` (marks: records or study marks) owned by `bid` (field `_b`); returns (ids new to
        the store, ids this batch counts): the second includes the first. `owners`, when given, gets the
        owner of each mark whose owner can no longer change once this batch's counters have moved: the
        marks this batch counts (`bid`) and those of an owner whose journal exists (SettledMarks).
        `found`, when given, gets the stored document of each mark that was there already."""
        if not docs:
            return set(), set()
        duplicates = [str(docs[i]["_id"]) for i in self._insert_marks(into, [{**d, "_b": bid} for d in docs])]
        new = {str(d["_id"]) for d in docs} - set(duplicates)
        ours = set(new)
        journals: dict[str, dict[str, Any] | None] = {}
        settled: dict[str, str] = {}
        for key in duplicates:
            mark = into.find_one({"_id": key}, None if found is not None else {"_b": 1})
            if found is not None and mark is not None:
                found[key] = mark
            owner = str(mark.get("_b", "")) if mark else ""
            if owner == bid:
                ours.add(key)
                continue
            if owner not in journals:
                journals[owner] = self._counts.find_one({"_id": f"j:{owner}"}) if owner else {"applied": True}
                journal = journals[owner]
                if journal is not None and not journal.get("applied"):
                    self.apply(owner, _deltas_from(journal))  # the owner died half-way: finish its work
            if journals[owner] is None:
                taken = into.update_one({"_id": key, "_b": owner}, {"$set": {"_b": bid}})
                if taken.modified_count:
                    ours.add(key)
            elif owner:
                settled[key] = owner
        if owners is not None:
            owners.update(settled)
            owners.update(dict.fromkeys(ours, bid))
        return new, ours

    def record(self, bid: str, deltas: Deltas) -> None:
        """The journal: written once per batch id, before any counter moves."""
        # Packed: counter field paths hold dots, and FerretDB stores no nested arrays.
        doc = {"_id": f"j:{bid}", "d": bson.encode({"d": deltas})}
        with suppress(DuplicateKeyError):  # a replay of this very batch: the journal holds the same deltas
            self._counts.insert_one({**doc, "applied": False})

    def apply(self, bid: str, deltas: Deltas) -> None:
        """Counter documents not known to exist are inserted empty first (one insert), then every guarded
        `$inc` goes in bulk commands (services/common/mongo.py: no guarded upserts in bulk on FerretDB)."""
        slot = _slot(bid)
        unknown = [doc_id for doc_id in deltas if doc_id not in self._known]
        if unknown:
            insert_new(self._counts, [{"_id": doc_id} for doc_id in unknown])
            if len(self._known) > _KNOWN_LIMIT:
                self._known.clear()
            self._known.update(unknown)
        bulk_write_chunked(
            self._counts,
            [
                UpdateOne({"_id": doc_id, slot: {"$ne": bid}}, {"$inc": fields, "$set": {slot: bid}})
                for doc_id, fields in deltas.items()
            ],
        )
        self._counts.update_one({"_id": f"j:{bid}"}, {"$set": {"applied": True}})

    def get(self, doc_id: str) -> dict[str, Any] | None:
        return self._counts.find_one({"_id": doc_id})


class SettledMarks:
    """Study marks whose owner batch has moved its counters (its journal exists and is applied), held in
    memory so that a batch meeting one again (every batch of a study after its first) neither inserts it
    nor reads its owner: the answer cannot change. A mark is only taken over from an owner without a
    journal, and a journal is deleted only by retention, after every mark it owns (keyed_retention.py),
    so such a mark keeps its owner; it is counted by this batch only when this batch is its owner (a
    replay), exactly as `Counters.claim` would find. At most `limit` marks are held (the oldest are
    forgotten and claimed from the store again)."""

    def __init__(self, limit: int = _KNOWN_LIMIT) -> None:
        self._owners: dict[str, str] = {}
        self._limit = limit

    def split(self, bid: str, ids: Iterable[str]) -> tuple[list[str], set[str]]:
        """(the ids to claim from the store, the settled ones this batch counts)."""
        unknown: list[str] = []
        ours: set[str] = set()
        for mark in ids:
            owner = self._owners.get(mark)
            if owner is None:
                unknown.append(mark)
            elif owner == bid:
                ours.add(mark)
        return unknown, ours

    def add(self, owners: dict[str, str]) -> None:
        """Call only once the batch that claimed them has applied its journal."""
        self._owners.update(owners)
        if len(self._owners) > self._limit:
            for mark in list(self._owners)[: len(self._owners) - self._limit]:
                del self._owners[mark]


def _deltas_from(journal: dict[str, Any]) -> Deltas:
    deltas: Deltas = bson.decode(bytes(journal["d"]))["d"]
    return deltas

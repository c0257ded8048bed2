"""Receipts in MongoDB: what ingest has already accepted, so a resent instance is published once.

A receipt's id is the event id of the InstanceIngested it stands for. It is written as "received"
before the event is published and marked "published" after the broker acknowledged it; a receipt
without its mark means a crash (or a failed publish) came in between, or the mark was not written
yet, and the event is published again with the same id and the same timestamps, byte for byte.

Both are inserts into `ingest_receipts`: the receipt under the event id, the mark under
`published:<event id>`. Nothing is ever updated in place: FerretDB 1.x (SQLite) does not use the
`_id` index for updates and deletes, so an `update_one` scans the whole collection (~17 ms at 3,000
receipts, growing with every instance), while an insert or a find by `_id` stays ~1 ms. Marks
written by earlier versions are in `ingest_published` (same `_id` as the receipt) or are a receipt's
own `status: "published"`; both still count.

One collection, so that one `insert_many` per commit group (services/ingest/commit_group.py) claims
every instance of the group and marks those of earlier groups published: one round trip per group,
one PostgreSQL transaction under FerretDB. Only a receipt that already exists (a resend) costs reads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pymongo.database import Database
from pymongo.errors import PyMongoError

from services.common.mongo import insert_new
from services.ingest.errors import IngestUnavailable

COLLECTION = "ingest_receipts"
LEGACY_PUBLISHED_COLLECTION = "ingest_published"  # marks written by earlier versions, read only
MARK_PREFIX = "published:"


def mark_id(event_id: str) -> str:
    return MARK_PREFIX + event_id


class ReceiptStatus(StrEnum):
    RECEIVED = "received"
    PUBLISHED = "published"


@dataclass(frozen=True)
class Receipt:
    event_id: str
    status: ReceiptStatus
    received_at_ms: int
    new: bool = False  # this claim created it


@dataclass(frozen=True)
class ReceiptFacts:
    """What a receipt records besides its status; ids and sizes only, never header values."""

    source_org: str
    channel: str
    sop_instance_uid: str
    sha256: str
    size: int


class ReceiptStoreUnavailable(IngestUnavailable):
    pass


class ReceiptStore(Protocol):
    def claim_many(
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, published: Sequence[str] = ()
    ) -> list[Receipt]:
        """For each (event id, facts), in order: insert a "received" receipt, or return the one that
        exists. Event ids are distinct. In the same write, mark `published` (event ids whose events
        the broker acknowledged earlier) published."""
        ...

    def mark_published_many(self, event_ids: Sequence[str], now_ms: int) -> None: ...


class MongoReceiptStore:
    def __init__(self, db: Database) -> None:
        self._receipts = db[COLLECTION]
        self._legacy_published = db[LEGACY_PUBLISHED_COLLECTION]

    def claim(self, event_id: str, facts: ReceiptFacts, now_ms: int) -> Receipt:
        return self.claim_many([(event_id, facts)], now_ms)[0]

    def claim_many(
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, published: Sequence[str] = ()
    ) -> list[Receipt]:
        # Claims first: `present` positions below len(claims) are receipts that exist. A mark already
        # there was written by an earlier attempt: the first mark's time stays.
        docs = [_receipt_doc(event_id, facts, now_ms) for event_id, facts in claims]
        docs += [_mark_doc(event_id, now_ms) for event_id in published]
        try:
            present = insert_new(self._receipts, docs)
        except PyMongoError as exc:
            raise ReceiptStoreUnavailable(f"receipt store unavailable: {type(exc).__name__}") from exc
        return [
            self._existing(event_id, facts, now_ms)
            if n in present
            else Receipt(event_id, ReceiptStatus.RECEIVED, now_ms, new=True)
            for n, (event_id, facts) in enumerate(claims)
        ]

    def _existing(self, event_id: str, facts: ReceiptFacts, now_ms: int) -> Receipt:
        try:
            existing = self._receipts.find_one({"_id": event_id}, {"status": 1, "received_at_ms": 1})
            published = existing is not None and (
                existing.get("status") == ReceiptStatus.PUBLISHED.value  # written in place by earlier versions
                or self._receipts.find_one({"_id": mark_id(event_id)}, {"_id": 1}) is not None
                or self._legacy_published.find_one({"_id": event_id}, {"_id": 1}) is not None
            )
        except PyMongoError as exc:
            raise ReceiptStoreUnavailable(f"receipt store unavailable: {type(exc).__name__}") from exc
        if existing is None:  # removed between the two calls: claim it again
            return self.claim(event_id, facts, now_ms)
        status = ReceiptStatus.PUBLISHED if published else ReceiptStatus.RECEIVED
        return Receipt(event_id, status, int(existing.get("received_at_ms", now_ms)))

    def mark_published(self, event_id: str, now_ms: int) -> None:
        self.mark_published_many([event_id], now_ms)

    def mark_published_many(self, event_ids: Sequence[str], now_ms: int) -> None:
        # A mark already there was written by an earlier attempt: the first mark's time stays.
        try:
            insert_new(self._receipts, [_mark_doc(event_id, now_ms) for event_id in event_ids])
        except PyMongoError as exc:
            raise ReceiptStoreUnavailable(f"receipt store unavailable: {type(exc).__name__}") from exc


def _mark_doc(event_id: str, now_ms: int) -> dict[str, object]:
    return {"_id": mark_id(event_id), "published_at_ms": now_ms}


def _receipt_doc(event_id: str, facts: ReceiptFacts, now_ms: int) -> dict[str, object]:
    return {
        "_id": event_id,
        "status": ReceiptStatus.RECEIVED.value,
        "received_at_ms": now_ms,
        "source_org": facts.source_org,
        "channel": facts.channel,
        "sop_instance_uid": facts.sop_instance_uid,
        "sha256": facts.sha256,
        "size": facts.size,
    }


class MemoryReceiptStore:
    """For unit tests and dry runs: the same contract, in a dict."""

    def __init__(self) -> None:
        self.receipts: dict[str, Receipt] = {}
        self._lock = threading.Lock()

    def claim(self, event_id: str, facts: ReceiptFacts, now_ms: int) -> Receipt:
        with self._lock:
            existing = self.receipts.get(event_id)
            if existing is not None:
                return existing
            self.receipts[event_id] = Receipt(event_id, ReceiptStatus.RECEIVED, now_ms)
            return Receipt(event_id, ReceiptStatus.RECEIVED, now_ms, new=True)

    def claim_many(
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, published: Sequence[str] = ()
    ) -> list[Receipt]:
        for event_id in published:  # in the same write, not a write of its own
            MemoryReceiptStore.mark_published(self, event_id, now_ms)
        return [self.claim(event_id, facts, now_ms) for event_id, facts in claims]

    def mark_published(self, event_id: str, now_ms: int) -> None:
        with self._lock:
            receipt = self.receipts[event_id]
            self.receipts[event_id] = Receipt(event_id, ReceiptStatus.PUBLISHED, receipt.received_at_ms)

    def mark_published_many(self, event_ids: Sequence[str], now_ms: int) -> None:
        for event_id in event_ids:
            self.mark_published(event_id, now_ms)

"""Receipts in MongoDB: what ingest has already accepted, so a resent instance is published once.

A receipt's id is the event id of the InstanceIngested it stands for. It is written as "received"
before the event is published and counts as published once a mark for it exists; a receipt without
its mark means a crash (or a failed publish) came in between, or the mark was not written yet, and
the event is published again with the same id and the same timestamps, byte for byte.

A mark stands for a whole commit group (services/ingest/commit_group.py): every receipt a
`claim_many` creates carries that write's group id, and one mark `published-group:<group id>` says
they were all acknowledged by the broker (the group publishes every receipt it created, or fails as
a whole and marks none). A receipt claimed again after such a failure or a crash is published again
by a later group, which did not create it: its mark is its own, `published:<event id>`, as every
mark was before group marks. So a receipt is published when its group's mark or its own mark exists.
`Receipt.mark` names the mark that will say so; the group passes it back to `write_marks`. One
document per group instead of one per instance: each document costs FerretDB and PostgreSQL CPU.

All are inserts into `ingest_receipts`. Nothing is ever updated in place: FerretDB 1.x (SQLite) does
not use the `_id` index for updates and deletes, so an `update_one` scans the whole collection (~17 ms
at 3,000 receipts, growing with every instance), while an insert or a find by `_id` stays ~1 ms (so
a resend looks its marks up one `_id` at a time, not with `$in`). Marks written by earlier versions
are per-event marks, or in `ingest_published` (same `_id` as the receipt), or are a receipt's own
`status: "published"`; all still count.

One collection, so that one `insert_many` per commit group claims every instance of the group and
marks earlier groups published: one round trip per group, one PostgreSQL transaction under
FerretDB. Only a receipt that already exists (a resend) costs reads.
"""

from __future__ import annotations

import itertools
import secrets
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
GROUP_MARK_PREFIX = "published-group:"


def mark_id(event_id: str) -> str:
    return MARK_PREFIX + event_id


def group_mark_id(group_id: str) -> str:
    return GROUP_MARK_PREFIX + group_id


class ReceiptStatus(StrEnum):
    RECEIVED = "received"
    PUBLISHED = "published"


@dataclass(frozen=True)
class Receipt:
    event_id: str
    status: ReceiptStatus
    received_at_ms: int
    new: bool = False  # this claim created it
    mark: str = ""  # the mark to write once its event is acknowledged: its group's if `new`, else its own


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
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, marks: Sequence[str] = ()
    ) -> list[Receipt]:
        """For each (event id, facts), in order: insert a "received" receipt, or return the one that
        exists. Event ids are distinct. In the same write, write `marks` (the `Receipt.mark`s of
        receipts whose events the broker acknowledged earlier)."""
        ...

    def write_marks(self, marks: Sequence[str], now_ms: int) -> None: ...


class MongoReceiptStore:
    def __init__(self, db: Database) -> None:
        self._receipts = db[COLLECTION]
        self._legacy_published = db[LEGACY_PUBLISHED_COLLECTION]
        # Group ids: unique across processes and restarts without asking anyone.
        self._process = secrets.token_hex(8)
        self._groups = itertools.count()

    def claim(self, event_id: str, facts: ReceiptFacts, now_ms: int) -> Receipt:
        return self.claim_many([(event_id, facts)], now_ms)[0]

    def claim_many(
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, marks: Sequence[str] = ()
    ) -> list[Receipt]:
        # Claims first: `present` positions below len(claims) are receipts that exist. A mark already
        # there was written by an earlier attempt: the first mark's time stays.
        group = f"{self._process}-{next(self._groups)}"
        docs = [_receipt_doc(event_id, facts, group, now_ms) for event_id, facts in claims]
        docs += [_mark_doc(mark, now_ms) for mark in marks]
        try:
            present = insert_new(self._receipts, docs)
        except PyMongoError as exc:
            raise ReceiptStoreUnavailable(f"receipt store unavailable: {type(exc).__name__}") from exc
        return [
            self._existing(event_id, facts, now_ms)
            if n in present
            else Receipt(event_id, ReceiptStatus.RECEIVED, now_ms, new=True, mark=group_mark_id(group))
            for n, (event_id, facts) in enumerate(claims)
        ]

    def _existing(self, event_id: str, facts: ReceiptFacts, now_ms: int) -> Receipt:
        try:
            existing = self._receipts.find_one({"_id": event_id}, {"status": 1, "received_at_ms": 1, "group": 1})
            published = existing is not None and (
                existing.get("status") == ReceiptStatus.PUBLISHED.value  # written in place by earlier versions
                or self._marked(group_mark_id(existing["group"]) if existing.get("group") else None)
                or self._marked(mark_id(event_id))
                or self._legacy_published.find_one({"_id": event_id}, {"_id": 1}) is not None
            )
        except PyMongoError as exc:
            raise ReceiptStoreUnavailable(f"receipt store unavailable: {type(exc).__name__}") from exc
        if existing is None:  # removed between the two calls: claim it again
            return self.claim(event_id, facts, now_ms)
        status = ReceiptStatus.PUBLISHED if published else ReceiptStatus.RECEIVED
        return Receipt(event_id, status, int(existing.get("received_at_ms", now_ms)), mark=mark_id(event_id))

    def _marked(self, mark: str | None) -> bool:
        return mark is not None and self._receipts.find_one({"_id": mark}, {"_id": 1}) is not None

    def mark_published(self, event_id: str, now_ms: int) -> None:
        """Mark one receipt published by its own mark (tests, and receipts claimed again)."""
        self.write_marks([mark_id(event_id)], now_ms)

    def write_marks(self, marks: Sequence[str], now_ms: int) -> None:
        # A mark already there was written by an earlier attempt: the first mark's time stays.
        try:
            insert_new(self._receipts, [_mark_doc(mark, now_ms) for mark in marks])
        except PyMongoError as exc:
            raise ReceiptStoreUnavailable(f"receipt store unavailable: {type(exc).__name__}") from exc


def _mark_doc(mark: str, now_ms: int) -> dict[str, object]:
    return {"_id": mark, "published_at_ms": now_ms}


def _receipt_doc(event_id: str, facts: ReceiptFacts, group: str, now_ms: int) -> dict[str, object]:
    return {
        "_id": event_id,
        "status": ReceiptStatus.RECEIVED.value,
        "received_at_ms": now_ms,
        "group": group,
        "source_org": facts.source_org,
        "channel": facts.channel,
        "sop_instance_uid": facts.sop_instance_uid,
        "sha256": facts.sha256,
        "size": facts.size,
    }


class MemoryReceiptStore:
    """For unit tests and dry runs: the same contract, in dicts."""

    def __init__(self) -> None:
        self.receipts: dict[str, Receipt] = {}
        self._groups: dict[str, list[str]] = {}  # group mark → the event ids its claim created
        self._next_group = itertools.count()
        self._lock = threading.Lock()

    def claim(self, event_id: str, facts: ReceiptFacts, now_ms: int) -> Receipt:
        return self.claim_many([(event_id, facts)], now_ms)[0]

    def claim_many(
        self, claims: Sequence[tuple[str, ReceiptFacts]], now_ms: int, marks: Sequence[str] = ()
    ) -> list[Receipt]:
        with self._lock:
            self._write_marks(marks)  # in the same write, not a write of its own
            group = group_mark_id(str(next(self._next_group)))
            created = self._groups[group] = []
            claimed: list[Receipt] = []
            for event_id, _ in claims:
                existing = self.receipts.get(event_id)
                if existing is None:
                    self.receipts[event_id] = Receipt(event_id, ReceiptStatus.RECEIVED, now_ms)
                    created.append(event_id)
                    claimed.append(Receipt(event_id, ReceiptStatus.RECEIVED, now_ms, new=True, mark=group))
                else:
                    claimed.append(Receipt(event_id, existing.status, existing.received_at_ms, mark=mark_id(event_id)))
            return claimed

    def mark_published(self, event_id: str, now_ms: int) -> None:
        self.write_marks([mark_id(event_id)], now_ms)

    def write_marks(self, marks: Sequence[str], now_ms: int) -> None:
        with self._lock:
            self._write_marks(marks)

    def _write_marks(self, marks: Sequence[str]) -> None:
        for mark in marks:
            own = [mark.removeprefix(MARK_PREFIX)] if mark.startswith(MARK_PREFIX) else []
            for event_id in self._groups.get(mark, own):
                receipt = self.receipts[event_id]
                self.receipts[event_id] = Receipt(event_id, ReceiptStatus.PUBLISHED, receipt.received_at_ms)

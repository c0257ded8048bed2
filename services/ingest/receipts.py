"""Receipts: what ingest has already accepted, so a resent instance is published once.

A receipt's id is the event id of the InstanceIngested it stands for. It is written as "received"
before the event is published and counts as published once a mark for it exists; a receipt without
its mark means a crash (or a failed publish) came in between, or the mark was not written yet, and
the event is published again with the same id and the same timestamps, byte for byte.

A mark stands for a whole commit group (services/ingest/commit_group.py): every receipt a
`claim_many` creates carries that write's group id, and one mark `published-group:<group id>` says
they were all acknowledged by the broker (the group publishes every receipt it created, or fails as
a whole and marks none). A receipt claimed again after such a failure or a crash is published again
by a later group, which did not create it: its mark is its own, `published:<event id>`. So a receipt
is published when its group's mark or its own mark exists. `Receipt.mark` names the mark that will
say so; the group passes it back, with its next claim or `write_marks`.

The store in use is `FileReceiptStore` (services/ingest/file_receipts.py), on the blob volume: it
writes nothing before the publish and marks each event by itself, so a claim finds an event either
published or not at all, and a republished event carries the resend's timestamps.
`MemoryReceiptStore`, for tests, keeps the whole contract above. The receipts were once MongoDB
documents, `ingest_receipts`, which are no longer read (services/ingest/README.md).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from services.ingest.errors import IngestUnavailable

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

"""Receipts: what ingest has already published, so a resent instance is published once.

A receipt's id is the event id of the InstanceIngested it stands for (a hash of organisation, SOP
Instance UID and SHA-256, so the same instance resent has the same id). A claim looks the id up:
published (its mark exists), the instance is a duplicate; not, it is published now. Nothing is written
before the publish: `Receipt.mark` names the mark that will say "published", which the commit group
(services/ingest/commit_group.py) passes back once the broker has acknowledged the event, with its
next claim or `write_marks`. An instance whose event was acknowledged but whose mark was never written
(the process killed in between) is published again when resent, under the same event id with the
resend's timestamps; downstream stages keep one by its id, as they do for any redelivery.

The store in use is `FileReceiptStore` (services/ingest/file_receipts.py), on the blob volume;
`MemoryReceiptStore`, for tests and dry runs, keeps the same contract in a set. The receipts were once
MongoDB documents, `ingest_receipts`, which are no longer read (services/ingest/README.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.ingest.errors import IngestUnavailable

MARK_PREFIX = "published:"


def mark_id(event_id: str) -> str:
    return MARK_PREFIX + event_id


@dataclass(frozen=True)
class Receipt:
    event_id: str
    published: bool  # its mark exists: a duplicate
    mark: str = ""  # not published: the mark to write once its event is acknowledged


class ReceiptStoreUnavailable(IngestUnavailable):
    pass


class ReceiptStore(Protocol):
    def claim_many(self, event_ids: Sequence[str], marks: Sequence[str] = ()) -> list[Receipt]:
        """Write `marks` (the `Receipt.mark`s of events the broker acknowledged since the last call),
        then look each event id up, in order."""
        ...

    def write_marks(self, marks: Sequence[str]) -> None:
        """Write the marks (at shutdown: no next claim will carry them)."""
        ...


class MemoryReceiptStore:
    """For unit tests and dry runs: the same contract, in a set."""

    def __init__(self) -> None:
        self.published: set[str] = set()
        self._lock = threading.Lock()

    def claim_many(self, event_ids: Sequence[str], marks: Sequence[str] = ()) -> list[Receipt]:
        with self._lock:
            self._write_marks(marks)
            return [
                Receipt(event_id, True) if event_id in self.published else Receipt(event_id, False, mark_id(event_id))
                for event_id in event_ids
            ]

    def write_marks(self, marks: Sequence[str]) -> None:
        with self._lock:
            self._write_marks(marks)

    def _write_marks(self, marks: Sequence[str]) -> None:
        for mark in marks:
            if not mark.startswith(MARK_PREFIX):
                raise ValueError("not a mark this store wrote")
            self.published.add(mark.removeprefix(MARK_PREFIX))

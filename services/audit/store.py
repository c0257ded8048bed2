"""Where audit records live: the AuditStore port and its MongoDB implementation.

Written for the subset FerretDB 1.x supports: no transactions, TTL indexes or change streams; inserts
are idempotent through the unique `_id` (duplicate-key errors mean "already recorded").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, ExecutionTimeout, PyMongoError, WriteConcernError

from services.audit.queries import AuditSummary, Cursor, EventFilter, EventPage, cursor_after, mongo_filter, time_filter
from services.audit.records import RECORD_FIELDS, AuditRecord, EventType
from services.common.messages import TransientError

DUPLICATE_KEY = 11000
_TIME_ORDER = [("occurred_at", ASCENDING), ("_id", ASCENDING)]
_TRANSIENT = (ConnectionFailure, ExecutionTimeout, WriteConcernError)


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
        """Up to `limit` records in (occurred_at, _id) order after `after`."""
        ...

    def summary(self, since: datetime | None = None, until: datetime | None = None) -> AuditSummary: ...

    def ping(self) -> bool: ...


@contextmanager
def _unavailable_is_transient() -> Iterator[None]:
    try:
        yield
    except _TRANSIENT as exc:
        raise TransientError(f"audit store unavailable: {type(exc).__name__}") from exc


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def record_from_document(doc: dict[str, Any]) -> AuditRecord:
    """Also tolerates a client without tz_aware=True: every datetime comes back in UTC."""
    record = {name: _aware(doc.get(name)) for name in RECORD_FIELDS}
    return record  # type: ignore[return-value]


def _only_duplicates(exc: BulkWriteError) -> bool:
    details = exc.details or {}
    return not details.get("writeConcernErrors") and all(
        error.get("code") == DUPLICATE_KEY for error in details.get("writeErrors", [])
    )


class MongoAuditStore:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self._records = collection

    def ensure_indexes(self) -> None:
        """Idempotent; call once at start-up (not in __init__: constructing a store does no I/O)."""
        self._records.create_index("study_uid")
        self._records.create_index("delivered_study_uid")
        self._records.create_index(_TIME_ORDER)
        self._records.create_index("source_org")
        self._records.create_index("partner_id")
        self._records.create_index("event_type")

    def insert(self, records: Sequence[AuditRecord]) -> int:
        if not records:
            return 0
        try:
            with _unavailable_is_transient():
                result = self._records.insert_many([dict(r) for r in records], ordered=False)
            return len(result.inserted_ids)
        except BulkWriteError as exc:
            # Both MongoDB and FerretDB report each duplicate as a writeError with code 11000.
            if _only_duplicates(exc):
                return int(exc.details.get("nInserted", 0))
            raise

    def study_trail(self, study_uid: str) -> list[AuditRecord]:
        with _unavailable_is_transient():
            # Plain equality filters, one per field: FerretDB 1.x pushes those down to SQL, not $or/$in.
            found = {doc["_id"]: doc for doc in self._records.find({"study_uid": study_uid})}
            for doc in self._records.find({"delivered_study_uid": study_uid}):
                found.setdefault(doc["_id"], doc)
            # A de-identified partner delivery carries only the remapped UIDs; follow them one step.
            copies = sorted({d["delivered_study_uid"] for d in found.values() if d.get("delivered_study_uid")})
            for uid in copies:
                if uid != study_uid:
                    for doc in self._records.find({"delivered_study_uid": uid}):
                        found.setdefault(doc["_id"], doc)
        return [record_from_document(doc) for doc in found.values()]

    def events(self, query: EventFilter, limit: int, after: Cursor | None = None) -> EventPage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with _unavailable_is_transient():
            docs = list(self._records.find(mongo_filter(query, after)).sort(_TIME_ORDER).limit(limit + 1))
        records = [record_from_document(doc) for doc in docs[:limit]]
        more = len(docs) > limit
        return EventPage(records, cursor_after(records[-1]) if more else None)

    def _count_by(self, match: dict[str, Any], key: str) -> dict[str, int]:
        pipeline = [{"$match": match}, {"$group": {"_id": f"${key}", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
        return {
            str(row["_id"]) if row.get("_id") is not None else "": int(row["n"])
            for row in self._records.aggregate(pipeline)
        }

    def summary(self, since: datetime | None = None, until: datetime | None = None) -> AuditSummary:
        when = time_filter(since, until)
        with _unavailable_is_transient():
            return self._summary(when)

    def _summary(self, when: dict[str, Any]) -> AuditSummary:
        return AuditSummary(
            events_by_type=self._count_by(when, "event_type"),
            delivered_by_partner=self._count_by(
                {**when, "event_type": EventType.OUTCOME.value, "status": "delivered"}, "partner_id"
            ),
            failed_by_partner=self._count_by(
                {**when, "event_type": EventType.OUTCOME.value, "status": "failed"}, "partner_id"
            ),
            quarantined_by_reason=self._count_by({**when, "event_type": EventType.QUARANTINED.value}, "reason"),
            dead_letters_by_stage=self._count_by({**when, "event_type": EventType.DEAD_LETTER.value}, "stage"),
        )

    def ping(self) -> bool:
        try:
            self._records.database.command("ping")
        except PyMongoError:
            return False
        return True

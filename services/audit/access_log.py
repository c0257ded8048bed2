"""Who asked the audit API what: every request to `/audit/*` is itself an audit record.

In DICOM PS3.15 A.5.3 terms each entry is a Query (110112) whose object is the audit log, i.e. Audit
Log Used (110101): the analyst (or the unknown caller refused), the scope of the key, the route and
its parameters, the outcome (PS3.15 EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious
failure) and the HTTP status. Entries go to their own insert-only collection, `_id` = `query:<uuid>`
(`query:<run>:<seq>` when the audit service's background appender numbers them for the tamper-evident
log, services/audit/access_appender.py), so writing one is a single primary-key insert and never
touches the pipeline's records, pages or counters (services/audit/store.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from services.common.messages import TransientError

QUERY = ("110112", "Query")
AUDIT_LOG_USED = ("110101", "Audit Log Used")


# A request's parameter names become a document's field names, which may hold neither "." nor a leading
# "$" (MongoDB; FerretDB refuses both anywhere), and PostgreSQL stores no NUL in any text. Those are
# percent-encoded as a URL would carry them ("%" too, so the record stays exact), not refused: a request
# the access log could not record was answered 503 "try again", for ever, and was never recorded.
_UNSTORABLE_IN_NAMES = str.maketrans({"%": "%25", ".": "%2E", "$": "%24", "\x00": "%00"})
_UNSTORABLE_IN_TEXT = str.maketrans({"\x00": "%00"})


def storable_params(params: Mapping[str, str]) -> dict[str, str]:
    """`params` as fields the database takes (pure)."""
    return {
        name.translate(_UNSTORABLE_IN_NAMES): value.translate(_UNSTORABLE_IN_TEXT) for name, value in params.items()
    }


def storable_text(text: str) -> str:
    """A path or value the database takes: NUL percent-encoded (pure)."""
    return text.translate(_UNSTORABLE_IN_TEXT)


def outcome_of(status: int) -> int:
    return 0 if status < 400 else 4 if status < 500 else 8


@dataclass(frozen=True)
class AccessEntry:
    analyst_id: str | None  # None: no key or an unknown one
    scope: str | None
    method: str
    path: str
    params: dict[str, str]
    status: int
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    entry_id: str = field(default_factory=lambda: f"query:{uuid.uuid4().hex}")

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["_id"] = doc.pop("entry_id")
        doc["event_id"] = {"code": AUDIT_LOG_USED[0], "meaning": AUDIT_LOG_USED[1]}
        doc["event_type"] = {"code": QUERY[0], "meaning": QUERY[1]}
        doc["outcome"] = outcome_of(self.status)
        return doc


class AccessLog(Protocol):
    def record(self, entry: AccessEntry) -> None:
        """Raises TransientError when the entry could not be stored (the query is then not answered)."""
        ...


class MongoAccessLog:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self._entries = collection

    def record(self, entry: AccessEntry) -> None:
        try:
            self._entries.insert_one(entry.document())
        except PyMongoError as exc:
            raise TransientError(f"access log unavailable: {type(exc).__name__}") from exc


class MemoryAccessLog:
    """For tests and for a deployment that forwards the service's own logs elsewhere."""

    def __init__(self) -> None:
        self.entries: list[AccessEntry] = []

    def record(self, entry: AccessEntry) -> None:
        self.entries.append(entry)

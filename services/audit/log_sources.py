"""What the tamper-evident log holds besides the pipeline's records: the analysts' queries (the access log,
services/audit/access_log.py) and the control plane's changes (services/common/control_changes.py).

Both are appended as leaves of the same log, through its single writer (services/audit/tamper_log.py),
so one `imx audit verify` covers them. A leaf names its document by a prefixed id, `access:<_id>` or
`change:<_id>`, which no pipeline record id can take (those start with an event type); the digest covers
the document as stored with that prefixed `_id`, and verification reads it back by `_id` from its own
collection (`LoggedDocuments`).

- Queries are stored by the audit process that answers them before the answer leaves (a 503 when the
  entry cannot be stored) and appended by its background appender shortly after, or by the next start
  after a crash (services/audit/access_appender.py, which says the guarantee and its limit).
- Changes are written by every service into `control_changes`, so the log's writer reads them from there
  (`ChangeTail.poll`, on the tree-head ticker and at a clean stop): `_id`s from LAG_MS before the newest
  one appended on (their `_id` starts with the change's time in ms), those not appended yet in order.
  A change is therefore in the log seconds after it is made; one deleted before that is not detected.
  FerretDB answers the `_id` range by a scan of the collection, which changes keep small.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from services.audit.log_entries import unpacked
from services.audit.tamper_log import TamperLog, unavailable_is_transient
from services.common.messages import TransientError

log = logging.getLogger(__name__)

ACCESS, CHANGE = "access:", "change:"
SOURCES = (ACCESS, CHANGE)
CHANGES_TAIL = "tail:control_changes"  # in the log's collection: the newest change appended (its ms)
LAG_MS = 60_000  # a change whose `_id` time is this much older than the newest appended one is missed
TAIL_LIMIT = 5_000  # changes appended at once (the first poll reads every change stored before)


def is_side_entry(leaf_id: str) -> bool:
    """A leaf naming an access entry or a control change, whose every stored field is covered."""
    return leaf_id.startswith(SOURCES)


def leaf_form(prefix: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document as the log digests it: as stored, under its leaf id."""
    return {**doc, "_id": prefix + str(doc["_id"])}


def _change_ms(change_id: str) -> int:
    head = change_id.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


class LoggedDocuments:
    """Verification's RecordSource: a leaf id read by `_id` from the collection its prefix names."""

    def __init__(
        self,
        records: Collection[dict[str, Any]],
        access: Collection[dict[str, Any]],
        changes: Collection[dict[str, Any]],
    ) -> None:
        self._records = records
        self._by_prefix = {ACCESS: access, CHANGE: changes}

    def get(self, record_id: str) -> Mapping[str, Any] | None:
        with unavailable_is_transient():
            for prefix, collection in self._by_prefix.items():
                if record_id.startswith(prefix):
                    doc = collection.find_one({"_id": record_id[len(prefix) :]})
                    return leaf_form(prefix, doc) if doc is not None else None
            doc = self._records.find_one({"_id": record_id})
            return unpacked(doc) if doc is not None else None


class ChangeTail:
    """Appends the control plane's changes to the log as they appear in `control_changes`."""

    def __init__(
        self, changes: Collection[dict[str, Any]], log_docs: Collection[dict[str, Any]], tamper_log: TamperLog
    ) -> None:
        self._changes = changes
        self._log_docs = log_docs
        self._log = tamper_log
        self._newest_ms: int | None = None
        self._appended: set[str] = set()  # change ids appended within LAG_MS of the newest

    def poll(self) -> int:
        """Append the changes not appended yet; returns how many. Raises TransientError."""
        try:
            with unavailable_is_transient():
                if self._newest_ms is None:
                    doc = self._log_docs.find_one({"_id": CHANGES_TAIL}) or {}
                    self._newest_ms = int(doc.get("ms", 0))
                since = f"{max(0, self._newest_ms - LAG_MS):013d}"
                found = self._changes.find({"_id": {"$gte": since}}).sort("_id", 1)
                new = [doc for doc in found if str(doc["_id"]) not in self._appended]
                for at in range(0, len(new), TAIL_LIMIT):
                    self._append(new[at : at + TAIL_LIMIT])
                return len(new)
        except PyMongoError as error:
            raise TransientError(f"control changes unreadable: {type(error).__name__}") from error

    def _append(self, changes: list[dict[str, Any]]) -> None:
        assert self._newest_ms is not None
        self._log.append([leaf_form(CHANGE, doc) for doc in changes])
        ids = [str(doc["_id"]) for doc in changes]
        self._appended.update(ids)
        newest = max(self._newest_ms, *(_change_ms(i) for i in ids))
        if newest > self._newest_ms:
            self._log_docs.update_one({"_id": CHANGES_TAIL}, {"$set": {"ms": newest}}, upsert=True)
            self._newest_ms = newest
            self._appended = {i for i in self._appended if _change_ms(i) >= newest - LAG_MS}

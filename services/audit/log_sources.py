"""What the tamper-evident log holds besides the pipeline's records: the analysts' queries (the access log,
services/audit/access_log.py) and the control plane's changes (services/common/control_changes.py).

Both are appended as leaves of the same log, through its single writer (services/audit/tamper_log.py),
so one `imx audit verify` covers them. A leaf names its document by a prefixed id, `access:<_id>` or
`change:<_id>`, which no pipeline record id can take (those start with an event type); the digest covers
the document as stored with that prefixed `_id`, and verification reads it back by `_id` from its own
collection (`LoggedDocuments`).

- Queries are appended by the audit process that answers them, after the entry is stored and before the
  answer leaves (`LoggedAccessLog`): an entry that cannot be appended fails the request with a 503, like
  one that cannot be stored.
- Changes are written by every service into `control_changes`, so the log's writer reads them from there
  (`ChangeTail.poll`, on the tree-head ticker and at a clean stop): `_id`s from LAG_MS before the newest
  one appended on (their `_id` starts with the change's time in ms), those not appended yet in order.
  A change is therefore in the log seconds after it is made; one deleted before that is not detected.
  FerretDB answers the `_id` range by a scan of the collection, which changes keep small.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from services.audit.access_log import AccessEntry, AccessLog
from services.audit.tamper_log import StoreClaims, TamperLog, unavailable_is_transient
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
            return self._records.find_one({"_id": record_id})


def _never_stored(_record_id: str) -> int | None:
    return None


@dataclass
class _Waiter:
    leaf: dict[str, Any]
    done: bool = False
    error: Exception | None = None


class LoggedAccessLog:
    """An AccessLog whose entries are also appended to the log before the answer leaves.

    Group commit: entries of requests answered at the same time go in one append (the log takes one
    append at a time, and an append costs the same writes for one entry as for fifty). The first request
    to find no append running makes one of every entry queued; the others wait for the append that holds
    theirs, so each answer still leaves only once its own entry is in the log, or gets its error."""

    def __init__(self, stored: AccessLog, tamper_log: TamperLog) -> None:
        self._stored = stored
        self._log = tamper_log
        self._turn = threading.Condition()
        self._queued: list[_Waiter] = []
        self._appending = False

    def record(self, entry: AccessEntry) -> None:
        self._stored.record(entry)
        waiter = _Waiter(leaf_form(ACCESS, entry.document()))
        with self._turn:
            self._queued.append(waiter)
            while self._appending and not waiter.done:
                self._turn.wait()
            if not waiter.done:  # no append running, and ours not appended: this request makes the next
                group, self._queued, self._appending = self._queued, [], True
        if not waiter.done:
            self._append(group)
        if waiter.error is not None:
            raise waiter.error

    def _append(self, group: list[_Waiter]) -> None:
        leaves = [w.leaf for w in group]
        error: Exception | None = None
        try:
            # No `leafof:` claims (an insert per entry): each id is new, made by its request, so it cannot
            # be in the log yet, and nothing appends it again (a failed append is a 503, not a retry).
            self._log.append(leaves, StoreClaims(frozenset(str(leaf["_id"]) for leaf in leaves), _never_stored))
        except Exception as exc:  # every waiter is woken and gets the group's error (TransientError: a 503)
            error = exc
        with self._turn:
            for waiter in group:
                waiter.error, waiter.done = error, True
            self._appending = False
            self._turn.notify_all()


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

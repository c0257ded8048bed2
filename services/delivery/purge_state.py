"""The record purge's own bookkeeping (record_retention.py), beside what it purges: which replica purges
now (a lease), the last day it finished, and the studies it kept because a partner was still owed them.
Small documents, read and written by `_id`."""

from __future__ import annotations

import contextlib
import uuid

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from services.common.mongo import insert_new
from services.delivery.delivered import FLAGS, study_key

HELD = "delivered_held"  # studies the purge kept because they were owed, looked at again each day
_PURGED = "records-purged-through"  # in FLAGS
_LEASE = "records-purge-lease"  # in FLAGS
_STAMPED = "records-stamp-scan"  # in FLAGS: when the scan for studies without a last day is next due
# That scan reads every study on FerretDB (a filter on a missing field): daily while it finds some (an
# earlier release still writing), weekly once it finds none.
STAMP_SCAN_DAYS = (1, 7)


class PurgeState:
    def __init__(self, db: Database) -> None:
        self._flags = db[FLAGS]
        self._held = db[HELD]
        self._holder = uuid.uuid4().hex  # this object's name on the lease

    def take_lease(self, now_ms: int, for_ms: int) -> bool:
        """Whether this object may run the purge now, until `now_ms + for_ms`: no other's lease runs (one
        replica at a time does the deletes), or it holds the lease already (a renewal)."""
        insert_new(self._flags, [{"_id": _LEASE, "until_ms": 0, "holder": ""}])
        taken = self._flags.update_one(
            {"_id": _LEASE, "$or": [{"until_ms": {"$lt": now_ms}}, {"holder": self._holder}]},
            {"$set": {"until_ms": now_ms + for_ms, "holder": self._holder}},
        )
        return taken.matched_count == 1

    def purged_through(self) -> int | None:
        """The last day whose studies the purge has been through (None: it never ran)."""
        doc = self._flags.find_one({"_id": _PURGED})
        return int(doc["day"]) if doc else None

    def set_purged_through(self, day: int) -> None:
        with contextlib.suppress(DuplicateKeyError):  # another replica's, at the same moment
            self._flags.update_one({"_id": _PURGED}, {"$max": {"day": day}}, upsert=True)

    def stamp_scan_due(self, today: int) -> bool:
        doc = self._flags.find_one({"_id": _STAMPED})
        return doc is None or today >= int(doc["next_day"])

    def stamp_scanned(self, today: int, found: int) -> None:
        next_day = today + STAMP_SCAN_DAYS[0 if found else 1]
        self._flags.update_one({"_id": _STAMPED}, {"$set": {"next_day": next_day}}, upsert=True)

    def held_studies(self) -> list[tuple[str, str, int]]:
        """(partner, study, day) of the studies the purge kept because they were owed (only those)."""
        return [(d["partner_id"], d["study_uid"], int(d["day"])) for d in self._held.find({})]

    def hold(self, partner_id: str, study_uid: str, day: int) -> None:
        doc = {"partner_id": partner_id, "study_uid": study_uid, "day": day}
        self._held.update_one({"_id": study_key(partner_id, study_uid)}, {"$set": doc}, upsert=True)

    def release(self, partner_id: str, study_uid: str, day: int) -> None:
        """Forget the hold of `day` (a hold made meanwhile, of another day, stays)."""
        self._held.delete_one({"_id": study_key(partner_id, study_uid), "day": day})

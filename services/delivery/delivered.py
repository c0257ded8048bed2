"""What each partner was sent: the index behind its DICOMweb retrieval and its study manifests.

Collections keyed so that nearly every question is an `_id` lookup (fast on any Mongo-wire server):
- `delivered_instances`, `_id = "<partner>/<study>/<series>/<sop>"` (UIDs as delivered): one per
  instance, what WADO-RS needs to find and check the object. `owed: true` while no gateway has reported
  it stored (OWED): the retention watch and the blob collection ask for that equality, which an index
  serves (MongoDB's, made here; on FerretDB the devstack's GIN index), not for a missing field, which
  FerretDB 1.24 answered by reading every delivery ever recorded. Deliveries recorded without the flag (by
  an earlier release) are flagged by a scan at most a day apart (`flag_unflagged`).
- `delivered_studies`, `_id = "<partner>/<study>"`: the ids of the study's manifest pages and when
  its last instance was delivered (and on which day, LAST_DAY: the record purge's equality,
  record_retention.py); `delivered_pages`, `_id = "<partner>/<study>#<page>"`: one immutable page per
  batch that delivered part of the study (a replayed batch names the same page; readers drop an
  instance listed twice).
- `pending_studies`, `_id = "<partner>/<study>"`: studies that had a delivery since their last
  StudyComplete; small (only studies in flight), so the completeness sweep reads it whole.
- `delivery_receipts`, `_id` = a hash of its entries: one page per consumed batch of the gateways'
  receipts (stored or dead-lettered, per delivery id and the send's ingest time: a receipt of an
  earlier send of a delivery ingested again since marks nothing). The stage writes it with one insert; the readers
  that ask what is still owed (`unstored`, `unstored_blobs`, `stored_at`: the retention watch, the blob
  collection, every few minutes) first fold the pages into the deliveries they report on and drop them
  (`settle_receipts`). An update per instance on the stage's path cost FerretDB 1.24 a read and a write
  of the whole document each (~1.2-2.3 ms of FerretDB and PostgreSQL CPU per receipt against ~0.2 ms
  as pages, measured apart); folded later, the same updates run in bulk away from it, and a page
  replayed after a crash is the same page.
- `delivered_flags`: when deliveries without the owed flag were last looked for (and the record
  purge's lease and progress, purge_state.py, whose held studies are in `delivered_held`).

Tried and not kept (2026-12-04): leaving each batch's page in a small `pending_pages` collection and
folding the pages into the study documents every few seconds, so a batch costs two inserts instead of
two inserts and two upserts. Four A/B pairs on fresh stacks (`make clean && make up && python -m
tools.bench --skip-orthanc`) gave FerretDB and PostgreSQL 1.21 / 1.12 / 1.46 / 1.25 ms of CPU per
instance before and 1.24 / 1.22 / 1.37 / 1.54 after, all processes 14.4 and 14.5 ms on average: the
pages were written twice and read once more, which cost what the upserts had.

The delivery stage writes both in one batch before it publishes the partner's feed, so a partner
never receives a reference it cannot fetch. A partner is only ever shown documents whose `_id`
starts with its own id: another partner's object is simply not found.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pymongo import DeleteOne, UpdateOne
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from services.common.events import now_ms
from services.common.mongo import bulk_write_chunked, insert_new, is_ferretdb
from services.common.settings import DAY_MS
from services.common.stores.partners import PartnerStore

log = logging.getLogger(__name__)

INSTANCES = "delivered_instances"
STUDIES = "delivered_studies"
PAGES = "delivered_pages"
PENDING = "pending_studies"
RECEIPTS = "delivery_receipts"
FLAGS = "delivered_flags"
# On every delivery this release records until its gateway reports it stored (`_receipt_updates`): what
# is still owed is the equality `{owed: true}`, which an index serves (`ensure_indexes`), not a filter on
# a missing field, which FerretDB 1.24 answers by reading every delivery ever recorded (10.2-11.6 s per
# question at 100,000 deliveries on the devstack, 2026-12-07).
OWED = "owed"
RESENT = "resent"  # a DeliveredInstance field: recorded over an earlier send of the instance
# The latest time a gateway reported storing an older send of the instance than the one recorded (another
# replica, with its own state folder, stored it over the newer): a store of the recorded send reported
# before then is not what the partner holds (`_receipt_updates`).
STORED_OVER = "older_send_stored_at_ms"
# The latest store of the recorded send reported (`stored_at_ms` keeps the first): what a store of an older
# send is compared with, so a store of the recorded one again after it is not taken for overwritten.
LAST_STORED = "last_stored_at_ms"
# How often the deliveries an earlier release wrote are put right (`flag_unflagged`): a scan. At most
# half the blob retention apart (`flag_sweep_for`).
FLAG_SWEEP_S = 24 * 3600.0
_SWEPT = "owed-swept"
# A study's last day of deliveries (days since the epoch, UTC), an equality the record purge asks for
# through an index (`ensure_indexes`).
LAST_DAY = "last_day"
BACKFILL_CHUNK = 1000
# What `forget_study` did.
FORGOTTEN, OWED_STUDY, MOVED = "forgotten", "owed", "moved"
# Pages folded per round of `settle_receipts` (each page holds one consumed batch of receipts).
SETTLE_PAGES = 50


@dataclass(frozen=True)
class StoredReceipt:
    """The partner's gateway stored (or gave up on) one delivered instance."""

    partner_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    status: str  # "stored" | "dead_lettered"
    at_ms: int
    delivery_id: str = ""  # the delivery reported on ("": any delivery of the instance made by at_ms)
    # The send of that delivery reported on (its ingest time): a receipt for an earlier send of a delivery
    # ingested again since (ingest re-publishes under the same id) marks nothing. None: any send.
    ingested_at_ms: int | None = None


@dataclass(frozen=True)
class DeliveredInstance:
    partner_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    delivery_id: str
    source_sha256: str = ""  # the object as received, when it differs (a de-identified copy)
    source_study_uid: str = ""  # as received, for outcomes about this delivery
    source_sop_uid: str = ""
    source_org: str = ""
    route_id: str = ""
    modality: str = ""
    priority: int = 0
    delivered_at_ms: int = 0
    ingested_at_ms: int = 0
    resent: bool = False  # recorded over an earlier send of the instance: this send's events are its own


def instance_key(partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{partner_id}/{study_uid}/{series_uid}/{sop_uid}"


def study_key(partner_id: str, study_uid: str) -> str:
    return f"{partner_id}/{study_uid}"


def _manifest_entry(item: DeliveredInstance) -> dict[str, object]:
    # What a reader of the manifest needs; the same on a replay.
    return {
        "series_uid": item.series_uid,
        "sop_uid": item.sop_uid,
        "sop_class_uid": item.sop_class_uid,
        "transfer_syntax_uid": item.transfer_syntax_uid,
        "modality": item.modality,
        "sha256": item.sha256,
        "size": item.size,
        "delivery_id": item.delivery_id,
        # Its lane: a StudyComplete goes on the least urgent lane its instances took, after them.
        "priority": item.priority,
    }


def _from_doc(doc: dict[str, object]) -> DeliveredInstance:
    fields = {k: doc[k] for k in DeliveredInstance.__dataclass_fields__ if k in doc}
    return DeliveredInstance(**fields)  # type: ignore[arg-type]


class DeliveredObjects:
    def __init__(self, db: Database, flag_sweep_s: float = FLAG_SWEEP_S) -> None:
        """`flag_sweep_s`: at most this long between looks for deliveries without the owed flag; give
        at most half the blob retention in force (`flag_sweep_for`)."""
        self._db = db
        self._flag_sweep_ms = int(flag_sweep_s * 1000)
        self._flags = db[FLAGS]
        self._instances = db[INSTANCES]
        self._partners = PartnerStore(db)  # removed partners are owed nothing any more
        self._studies = db[STUDIES]
        self._pages = db[PAGES]
        self._pending = db[PENDING]
        self._receipts = db[RECEIPTS]

    def record(self, items: Iterable[DeliveredInstance]) -> None:
        """Idempotent: recording the same deliveries again adds nothing a reader would see.

        No document grows per instance: FerretDB rewrites a whole document on each update, so a
        manifest appended to one instance at a time costs quadratic time in the study's size
        (measured: 50 instances added one by one to one study took 2.4 s). A batch writes each
        instance once (a plain insert; an existing one is a replay), one immutable manifest page
        per study, and one small update per study naming that page.
        """
        items = list(items)
        if not items:
            return
        # A SOP Instance UID re-sent with new content (a corrected image) replaces the older delivery,
        # which is then no longer owed; a replay of a delivery already recorded, or of an older one,
        # matches no document and changes nothing (`_older_than`).
        docs = [{"_id": _key(i), **_fields(i), OWED: True} for i in items]
        present = insert_new(self._instances, docs)
        bulk_write_chunked(
            self._instances,
            [
                update
                for n, i in enumerate(items)
                if n in present
                for update in (
                    # A newer delivery of the instance (a correction), or one whose id was sent before:
                    # ids are content-addressed, so an original sent again after its correction replaces
                    # that correction under its first id.
                    UpdateOne({"_id": _key(i), **_older_than(i)}, _recorded_over(i)),
                    # The same delivery ingested again (ingest re-publishes an event whose "published"
                    # mark was lost under its id, with the time of the new send): it is as new as its
                    # latest send, whichever of its copies was recorded first, and owed until that send's
                    # own receipt (the partner may hold another delivery of the instance meanwhile).
                    UpdateOne(
                        {"_id": _key(i), "delivery_id": i.delivery_id, "ingested_at_ms": {"$lt": i.ingested_at_ms}},
                        _recorded_over(i),
                    ),
                )
            ],
        )
        by_study: dict[tuple[str, str], list[DeliveredInstance]] = {}
        for item in items:
            by_study.setdefault((item.partner_id, item.study_uid), []).append(item)
        pages = {study: _page_id(group) for study, group in by_study.items()}
        insert_new(
            self._pages,
            [
                {"_id": f"{study_key(*study)}#{pages[study]}", "entries": [_manifest_entry(i) for i in group]}
                for study, group in by_study.items()
            ],
        )
        latest = {study: max(i.delivered_at_ms for i in group) for study, group in by_study.items()}
        bulk_write_chunked(
            self._studies,
            [
                UpdateOne(
                    {"_id": study_key(*study)},
                    {
                        "$setOnInsert": {
                            "partner_id": study[0],
                            "study_uid": study[1],
                            "priority": group[0].priority,
                            # Kept from its first batch: a study begun before keeps a part of them only.
                            NARROWABLE: True,
                        },
                        # What QIDO's /studies may narrow by before it reads manifests (`studies`).
                        "$addToSet": {
                            "pages": pages[study],
                            MODALITIES: {"$each": sorted({i.modality for i in group})},
                            SOP_CLASSES: {"$each": sorted({i.sop_class_uid for i in group})},
                        },
                        # LAST_DAY: which day's purge may forget the study (`studies_last_delivered_on`).
                        "$max": {"last_delivered_at_ms": latest[study], LAST_DAY: latest[study] // DAY_MS},
                    },
                    upsert=True,
                )
                for study, group in by_study.items()
            ],
        )
        bulk_write_chunked(
            self._pending,
            [
                UpdateOne(
                    {"_id": study_key(*study)},
                    {
                        "$setOnInsert": {"partner_id": study[0], "study_uid": study[1]},
                        "$max": {"last_delivered_at_ms": latest[study]},
                    },
                    upsert=True,
                )
                for study in by_study
            ],
        )
        self._restore(docs, present)

    def _restore(self, docs: list[dict[str, object]], present: set[int]) -> None:
        """Insert again the instances `record` found already there, if the record purge deleted one between
        that look and the update meant for it (which then matched nothing): a correction of a study older
        than the record retention would have had no record (`record_retention.py`)."""
        if present:
            insert_new(self._instances, [docs[n] for n in sorted(present)])

    def mark(self, receipts: Iterable[StoredReceipt]) -> None:
        """Record what the partners' gateways reported: one page, one insert (a replayed batch writes
        the same page again, which is already there). `settle_receipts` applies it to the deliveries."""
        entries = [
            {
                "key": instance_key(r.partner_id, r.study_uid, r.series_uid, r.sop_uid),
                "delivery_id": r.delivery_id,
                "status": r.status,
                "at_ms": r.at_ms,
                **({} if r.ingested_at_ms is None else {"ingested_at_ms": r.ingested_at_ms}),
            }
            for r in receipts
        ]
        if entries:
            insert_new(self._receipts, [{"_id": _receipts_page_id(entries), "entries": entries}])

    def settle_receipts(self) -> int:
        """Fold the receipt pages written so far into the deliveries they report on (idempotent: the
        first report of each kind wins), dropping each page once applied; returns the receipts folded.
        A receipt names its delivery, so one for an older delivery of the instance (content since
        replaced, `record`) marks nothing; one without a delivery id applies to a delivery made by its
        time. Pages written meanwhile wait for the next call; two callers at once apply some twice,
        harmlessly."""
        page_ids = [doc["_id"] for doc in self._receipts.find({}, {"_id": 1})]
        folded = 0
        for start in range(0, len(page_ids), SETTLE_PAGES):
            pages = [self._receipts.find_one({"_id": page_id}) for page_id in page_ids[start : start + SETTLE_PAGES]]
            updates = [_receipt_updates(entry) for page in pages if page for entry in page.get("entries", [])]
            marks = [u for r in updates for u in r.marks]
            # Most receipts are of the delivery recorded. Only when some did not mark theirs (perhaps of an
            # older delivery, stored over it) is what a store of an older one means looked for: on FerretDB
            # each update costs ~0.5 ms of its CPU and PostgreSQL's, even one that matches nothing.
            if bulk_write_chunked(self._instances, marks) == len(marks):
                owed_again = 0
            else:
                bulk_write_chunked(self._instances, [u for r in updates for u in r.stored_over])
                owed_again = bulk_write_chunked(self._instances, [u for r in updates for u in r.owed_again])
            if owed_again:
                log.warning(
                    "deliveries owed again: a partner's gateway reported storing an older send over them",
                    extra={"instances": owed_again},
                )
            for page in pages:
                if page:
                    self._receipts.delete_one({"_id": page["_id"]})
            folded += len(updates)
        return folded

    def unstored(self) -> Iterator[DeliveredInstance]:
        """Deliveries no gateway has reported stored or dead-lettered (it read those: their feed message
        expiring loses nothing) and that have not been declared expired (a scan: run it rarely; the
        retention watch does, every few minutes)."""
        self.settle_receipts()
        self.flag_unflagged()
        query = {OWED: True, "dead_lettered_at_ms": {"$exists": False}, "expired_at_ms": {"$exists": False}}
        for doc in self._instances.find(query):
            yield _from_doc(doc)

    def mark_expired(self, items: Iterable[DeliveredInstance], at_ms: int) -> None:
        """The deliveries `items` (as `unstored` listed them) expired unread; one delivered again since
        they were listed (a correction, or the same delivery sent again) is not marked."""
        updates = [
            UpdateOne(
                {
                    "_id": instance_key(i.partner_id, i.study_uid, i.series_uid, i.sop_uid),
                    "delivery_id": i.delivery_id,
                    "delivered_at_ms": i.delivered_at_ms,
                    # (an earlier release's record may have no ingest time; a new send always has a later one)
                    **({"ingested_at_ms": i.ingested_at_ms} if i.ingested_at_ms else {}),
                },
                {"$min": {"expired_at_ms": at_ms}},
            )
            for i in items
        ]
        bulk_write_chunked(self._instances, updates)

    def unstored_blobs(self) -> set[str]:
        """Every object (delivered copy or source) that a partner is still owed; a removed partner is owed
        nothing (its deliveries' objects were kept for ever)."""
        self.settle_receipts()
        self.flag_unflagged()
        owed: set[str] = set()
        gone = self._partners.retired_ids()
        unstored = self._instances.find({OWED: True}, {"sha256": 1, "source_sha256": 1, "partner_id": 1})
        for doc in unstored:
            if doc.get("partner_id") in gone:
                continue
            owed.add(doc["sha256"])
            if doc.get("source_sha256"):
                owed.add(doc["source_sha256"])
        return owed

    def ensure_indexes(self) -> None:
        """The indexes of the two questions that are not `_id` lookups: what is owed, and a partner's
        studies (QIDO's list). On FerretDB they are the devstack's GIN indexes (tools/devstack/postgres.py):
        the index FerretDB itself would make serves neither filter and would only cost writes."""
        if not is_ferretdb(self._db):
            self._instances.create_index(OWED, sparse=True)
            self._studies.create_index("partner_id")
            self._studies.create_index(LAST_DAY)

    def flag_unflagged(self) -> None:
        """Put right what an earlier release (a rolling upgrade's older replicas, a rollback) wrote, unless
        that was done less than `flag_sweep_s` ago: flag the unstored deliveries it recorded without the
        flag (a scan), and unflag those whose "stored" receipt it folded without removing the flag (they
        would be kept, and reported unread, for ever). Run before every question of what is owed.

        Deliveries this release records are flagged as they are recorded; only the earlier release's
        wait. One recorded unflagged at time t is flagged by the first look starting after t, at most
        `flag_sweep_s` later (the next look is due from this one's start, which such a delivery may
        follow), so its objects are kept if they were last written less than the retention minus
        `flag_sweep_s` before t: six days by default. Objects are refreshed as each stage writes them
        again, so that holds unless the pipeline was that far behind while the earlier release ran.
        `imx blobs gc` looks every time."""
        started = now_ms()
        swept = self._flags.find_one({"_id": _SWEPT})
        if swept and 0 <= started - int(swept["started_ms"]) < self._flag_sweep_ms:
            return
        self._instances.update_many(
            {OWED: {"$exists": False}, "stored_at_ms": {"$exists": False}}, {"$set": {OWED: True}}
        )
        # `record` sets the flag and removes `stored_at_ms` in one update: no owed delivery has both.
        self._instances.update_many({OWED: True, "stored_at_ms": {"$exists": True}}, {"$unset": {OWED: ""}})
        with contextlib.suppress(DuplicateKeyError):  # another replica's look, at the same moment
            self._flags.update_one({"_id": _SWEPT}, {"$set": {"started_ms": started}}, upsert=True)

    def delivered_to(self, partner_id: str) -> bool:
        """Whether anything was ever delivered to this id (through the index on the partner; asked when an
        id is given to a new partner, whose holder would otherwise read what was delivered under it)."""
        return self._studies.find_one({"partner_id": partner_id}, {"_id": 1}) is not None

    def stored_at(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> int | None:
        self.settle_receipts()
        doc = self._instances.find_one({"_id": instance_key(partner_id, study_uid, series_uid, sop_uid)})
        return int(doc["stored_at_ms"]) if doc and "stored_at_ms" in doc else None

    def quiet_studies(self, delivered_before_ms: int) -> list[tuple[str, str, int]]:
        """(partner, study, last delivery ms) of pending studies with no delivery since the given time."""
        return [
            (doc["partner_id"], doc["study_uid"], int(doc["last_delivered_at_ms"]))
            for doc in self._pending.find({})
            if int(doc.get("last_delivered_at_ms", 0)) < delivered_before_ms
        ]

    def studies_last_delivered_on(self, day: int) -> list[tuple[str, str]]:
        """(partner, study) of the studies whose last delivery was on `day` (days since the epoch)."""
        return [
            (d["partner_id"], d["study_uid"])
            for d in self._studies.find({LAST_DAY: day}, {"partner_id": 1, "study_uid": 1})
        ]

    def forget_study(self, partner_id: str, study_uid: str, day: int, retired: frozenset[str] = frozenset()) -> str:
        """Delete what was recorded of a study last delivered on `day`: FORGOTTEN; or nothing, OWED while a
        partner was never reported to have stored one of its instances (a `retired` partner is owed nothing),
        MOVED when the study was delivered to since (or is gone).

        The instances go first (each guarded: one delivered again meanwhile, a new delivery id and owed,
        keeps its record), then the study's record (guarded by its day), and its pages only once that
        went: a study delivered to while this ran keeps its pages, so every instance it lists that is
        still recorded stays listed (one a replay recorded again meanwhile, `_restore`, included), and its
        new day's purge finds them all. A purge stopped half way is done again from its day; one stopped
        between the study's record and its pages leaves those pages, which nothing reads."""
        key = study_key(partner_id, study_uid)
        doc = self._studies.find_one({"_id": key})
        if not doc or doc.get(LAST_DAY) != day:
            return MOVED
        last_day = int(doc.get("last_delivered_at_ms", 0)) // DAY_MS
        if last_day > day:  # delivered to by an earlier release, which kept no last day: found on its day
            self._studies.update_one({"_id": key}, {"$max": {LAST_DAY: last_day}})
            return MOVED
        page_ids = [f"{key}#{page_id}" for page_id in doc.get("pages", [])]
        instance_ids = {
            instance_key(partner_id, study_uid, str(entry["series_uid"]), str(entry["sop_uid"]))
            for page_id in page_ids
            for page in [self._pages.find_one({"_id": page_id})]
            if page
            for entry in page.get("entries", [])
        }
        recorded = [
            self._instances.find_one({"_id": i}, {"delivery_id": 1, OWED: 1, "stored_at_ms": 1}) for i in instance_ids
        ]
        present = [r for r in recorded if r]
        if partner_id not in retired and any(r.get(OWED) or "stored_at_ms" not in r for r in present):
            return OWED_STUDY
        unowed = {} if partner_id in retired else {OWED: {"$exists": False}}
        bulk_write_chunked(
            self._instances, [DeleteOne({"_id": r["_id"], "delivery_id": r["delivery_id"], **unowed}) for r in present]
        )
        if self._studies.delete_one({"_id": key, LAST_DAY: day}).deleted_count == 0:
            return MOVED
        bulk_write_chunked(self._pages, [DeleteOne({"_id": page_id}) for page_id in page_ids])
        return FORGOTTEN

    def retired_partners(self) -> frozenset[str]:
        return frozenset(self._partners.retired_ids())

    def first_day_of_studies(self, today: int) -> int | None:
        """The earliest last day of any study (None: none recorded); a scan of the studies, once, when
        the purge first runs. Studies recorded before the last day was kept get theirs here."""
        first: int | None = None
        for day in self._stamp_last_days(self._studies.find({}, {LAST_DAY: 1, "last_delivered_at_ms": 1}), 0, today):
            first = day if first is None else min(first, day)
        return first

    def stamp_unstamped_studies(self, floor: int, today: int) -> int:
        """Give the studies an earlier release recorded since the purge first ran (a rolling upgrade's older
        replicas, a rollback) their last day, none before `floor`, the first day the purge has not done
        (it never reads a done day again); how many. A scan of the studies without one."""
        found = self._studies.find({LAST_DAY: {"$exists": False}}, {"last_delivered_at_ms": 1})
        return sum(1 for _ in self._stamp_last_days(found, floor, today))

    def _stamp_last_days(self, docs: Iterable[Mapping[str, Any]], floor: int, today: int) -> Iterator[int]:
        """Each study's last day, after writing it to those without one (`stamped_day`)."""
        backfill: list[UpdateOne] = []
        for doc in docs:
            day = doc.get(LAST_DAY)
            if day is None:
                day = stamped_day(int(doc.get("last_delivered_at_ms", 0)), floor, today)
                backfill.append(UpdateOne({"_id": doc["_id"]}, {"$max": {LAST_DAY: day}}))
                if len(backfill) >= BACKFILL_CHUNK:  # not every study's update in memory at once
                    bulk_write_chunked(self._studies, backfill)
                    backfill = []
            yield int(day)
        bulk_write_chunked(self._studies, backfill)

    def settle(self, partner_id: str, study_uid: str, last_delivered_at_ms: int) -> bool:
        """The study was announced complete: forget it, unless a delivery came in meanwhile."""
        result = self._pending.delete_one(
            {"_id": study_key(partner_id, study_uid), "last_delivered_at_ms": last_delivered_at_ms}
        )
        return result.deleted_count == 1

    def instance(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> DeliveredInstance | None:
        doc = self._instances.find_one({"_id": instance_key(partner_id, study_uid, series_uid, sop_uid)})
        return _from_doc(doc) if doc else None

    def study(self, partner_id: str, study_uid: str) -> list[DeliveredInstance]:
        """The study's instances as delivered to this partner, in series then SOP UID order ([] when none)."""
        doc = self._studies.find_one({"_id": study_key(partner_id, study_uid)})
        if not doc:
            return []
        entries: dict[str, dict[str, object]] = {}
        replaced: dict[str, dict[str, dict[str, object]]] = {}  # SOP UID -> its entries by delivery id
        for page_id in doc.get("pages", []):
            page = self._pages.find_one({"_id": f"{study_key(partner_id, study_uid)}#{page_id}"})
            for entry in page.get("entries", []) if page else []:
                # A replayed page repeats an entry, harmlessly; a later page's entry for the same SOP
                # Instance UID with another delivery (new content) is settled below.
                sop_uid = str(entry["sop_uid"])
                earlier = entries.get(sop_uid)
                if earlier is not None and earlier["delivery_id"] != entry["delivery_id"]:
                    replaced.setdefault(sop_uid, {str(earlier["delivery_id"]): earlier})[str(entry["delivery_id"])] = (
                        entry
                    )
                entries[sop_uid] = entry
        for sop_uid, versions in replaced.items():
            # Pages are in the order recorded, not the order of the sends: the instance's record says which
            # delivery is current (`record`), and the manifest lists the same one (the later page's if the
            # record names neither: one being written this moment).
            current = self._instances.find_one(
                {"_id": instance_key(partner_id, study_uid, str(entries[sop_uid]["series_uid"]), sop_uid)},
                {"delivery_id": 1},
            )
            if current and str(current.get("delivery_id")) in versions:
                entries[sop_uid] = versions[str(current["delivery_id"])]
        ordered = sorted(entries.values(), key=lambda e: (str(e["series_uid"]), str(e["sop_uid"])))
        return [
            DeliveredInstance(
                partner_id=partner_id,
                study_uid=study_uid,
                series_uid=str(e["series_uid"]),
                sop_uid=str(e["sop_uid"]),
                sop_class_uid=str(e.get("sop_class_uid", "")),
                transfer_syntax_uid=str(e.get("transfer_syntax_uid", "")),
                modality=str(e.get("modality", "")),
                sha256=str(e["sha256"]),
                size=int(e["size"]),  # type: ignore[call-overload]
                delivery_id=str(e["delivery_id"]),
                # Entries written before they kept it: the study's, as first delivered.
                priority=int(e.get("priority", doc.get("priority", 0))),  # type: ignore[call-overload]
            )
            for e in ordered
        ]

    def series(self, partner_id: str, study_uid: str, series_uid: str) -> list[DeliveredInstance]:
        return [i for i in self.study(partner_id, study_uid) if i.series_uid == series_uid]

    def studies(
        self, partner_id: str, narrowed: Mapping[str, frozenset[str]] = MappingProxyType({})
    ) -> Iterator[dict[str, object]]:
        """Every study delivered to the partner: {study_uid, last_delivered_at_ms} (QIDO's study list,
        through the index on the partner, `ensure_indexes`; it reads every one of the partner's studies).
        Not their instance counts: those took a read of every study's manifest, for every list asked,
        whatever its limit. `narrowed` (QIDO's criteria: field -> values wanted): only studies that may
        match by their modalities and SOP classes, and those begun before studies kept them."""
        query: dict[str, object] = {"partner_id": partner_id}
        kept = {
            STUDY_FIELDS[name]: {"$in": sorted(values)} for name, values in narrowed.items() if name in STUDY_FIELDS
        }
        if kept:
            query["$or"] = [kept, {NARROWABLE: {"$exists": False}}]
        projection = {"study_uid": 1, "last_delivered_at_ms": 1}
        for doc in self._studies.find(query, projection):
            yield {"study_uid": doc["study_uid"], "last_delivered_at_ms": doc.get("last_delivered_at_ms", 0)}


# A study's modalities and SOP classes, by the DeliveredInstance field QIDO matches them on.
MODALITIES, SOP_CLASSES = "modalities", "sop_classes"
STUDY_FIELDS = MappingProxyType({"modality": MODALITIES, "sop_class_uid": SOP_CLASSES})
# On a study recorded since its first batch by a release that keeps them (one begun earlier lacks the
# earlier batches' values: it is always listed, and its manifest decides).
NARROWABLE = "narrowable"

# What gateways reported about a delivery; a newer send recorded over it starts without them, STORED_OVER
# included: every store of an older send reported so far was made before the newer send could be stored.
_REPORTED = ("stored_at_ms", "dead_lettered_at_ms", "expired_at_ms", LAST_STORED, STORED_OVER)


def _fields(item: DeliveredInstance) -> dict[str, object]:
    """The record's fields as a document. Every field is a str or an int, so a shallow copy is the whole
    of it: `dataclasses.asdict` copies each value through its recursive walk, ~12 us against ~0.5."""
    return dict(vars(item))


def _recorded_over(item: DeliveredInstance) -> dict[str, object]:
    """The update recording `item` over an earlier send of its instance: all its fields as this send's (its
    delivery time too: the retention watch dates a message on the feed by it, and the earlier send's may be
    long gone from there), owed until this send's own receipt, and `resent`, so that its outcomes are its own."""
    return {"$set": {**_fields(item), OWED: True, RESENT: True}, "$unset": dict.fromkeys(_REPORTED, "")}


def stamped_day(last_delivered_at_ms: int, floor: int, today: int) -> int:
    """The last day given a study recorded without one: its last delivery's, or today's for one recorded
    without a time (none is so), and never before `floor`."""
    return max(last_delivered_at_ms // DAY_MS or today, floor)


def _key(item: DeliveredInstance) -> str:
    return instance_key(item.partner_id, item.study_uid, item.series_uid, item.sop_uid)


def _older_than(item: DeliveredInstance) -> dict[str, object]:
    """The filter that matches a recorded delivery of the instance older than `item`, which `item` then
    replaces. Newer is the later ingest (the later send of new content under the same SOP UID), and on
    the same ingest time (one commit group, or replicas in the same millisecond) the greater delivery id,
    which is arbitrary but the same on every replay: both are carried by a replayed event. The delivery
    time is not: a replay stamps the clock again (`derived_meta`), so a guard on it let a replayed batch
    write an older delivery back over a correction recorded meanwhile from another lane."""
    return {
        "delivery_id": {"$ne": item.delivery_id},
        "$or": [
            {"ingested_at_ms": {"$lt": item.ingested_at_ms}},
            {"ingested_at_ms": item.ingested_at_ms, "delivery_id": {"$lt": item.delivery_id}},
            {"ingested_at_ms": {"$exists": False}},
        ],
    }


def _page_id(group: list[DeliveredInstance]) -> str:
    """Deterministic: the same batch replayed names the same page."""
    return hashlib.sha256("\x1f".join(sorted(i.delivery_id for i in group)).encode()).hexdigest()[:16]


def _receipts_page_id(entries: list[dict[str, object]]) -> str:
    """Deterministic: the same batch of receipts replayed names the same page."""
    fields = ("key", "delivery_id", "status", "at_ms", "ingested_at_ms")
    lines = sorted("\x1f".join(str(entry.get(k, "")) for k in fields) for entry in entries)
    return hashlib.sha256("\x1e".join(lines).encode()).hexdigest()[:32]


def _receipt_updates(entry: dict[str, object]) -> ReceiptUpdates:
    """One receipt applied to its delivery: the earliest report of its kind is kept. A receipt for a send
    older than the one recorded (the delivery ingested again since, which made it owed again) marks
    nothing: that send's own receipt will. An entry without a send (a page an earlier release wrote)
    applies to any.

    But a store of another, so older, delivery of the instance, reported later than the recorded one's
    last store (gateway replicas keep a state folder each, and one that never saw the newer delivery
    stores the older over it), means the partner holds the older one: the recorded delivery is owed
    again, and a report of its store from before then marks nothing, in whichever order the receipts are
    folded, if the kinds of update are applied in ReceiptUpdates' order, as `settle_receipts` does (a
    tie goes to the recorded delivery). Only receipts naming their delivery count: an earlier release's name none."""
    at_ms = entry["at_ms"]
    query: dict[str, object] = {"_id": entry["key"]}
    if entry.get("delivery_id"):
        query["delivery_id"] = entry["delivery_id"]
    else:  # a receipt cannot be about a delivery made after it
        query["delivered_at_ms"] = {"$lte": at_ms}
    if "ingested_at_ms" in entry:
        query["$or"] = [{"ingested_at_ms": {"$lte": entry["ingested_at_ms"]}}, {"ingested_at_ms": {"$exists": False}}]
    update: dict[str, object] = {"$min": {f"{entry['status']}_at_ms": at_ms}}
    if entry["status"] != "stored":
        return ReceiptUpdates(marks=[UpdateOne(query, update)])
    update["$unset"] = {OWED: ""}
    update["$max"] = {LAST_STORED: at_ms}
    query["$and"] = [{"$or": [{STORED_OVER: {"$exists": False}}, {STORED_OVER: {"$lte": at_ms}}]}]
    if not entry.get("delivery_id"):
        return ReceiptUpdates(marks=[UpdateOne(query, update)])
    # Another delivery of the instance recorded: a newer one (a send replaces only older ones). Not an
    # earlier send of the same delivery, whose object is the same but for a changed profile, and whose
    # repeats are reported under the first store's time.
    recorded_newer = {"_id": entry["key"], "delivery_id": {"$ne": entry["delivery_id"]}}
    stored_before = {
        "$or": [
            {LAST_STORED: {"$lt": at_ms}},
            {LAST_STORED: {"$exists": False}, "stored_at_ms": {"$lt": at_ms}},  # stored by an earlier release
        ]
    }
    return ReceiptUpdates(
        stored_over=[UpdateOne(recorded_newer, {"$max": {STORED_OVER: at_ms}})],
        marks=[UpdateOne(query, update)],
        owed_again=[
            UpdateOne({**recorded_newer, **stored_before}, {"$set": {OWED: True}, "$unset": {"stored_at_ms": ""}})
        ],
    )


@dataclass
class ReceiptUpdates:
    """A receipt's updates, by kind, applied kind by kind (each kind for many receipts at once): `marks`,
    `stored_over`, then `owed_again`. A mark of the recorded delivery applied after an older one's
    `stored_over` sees it; one applied before it is taken back by `owed_again`, applied after both."""

    marks: list[UpdateOne] = field(default_factory=list)
    stored_over: list[UpdateOne] = field(default_factory=list)
    owed_again: list[UpdateOne] = field(default_factory=list)


def flag_sweep_for(blob_retention_s: float) -> float:
    """How often to look for unflagged deliveries under this blob retention (`FLAG_SWEEP_S`)."""
    return min(FLAG_SWEEP_S, blob_retention_s / 2)

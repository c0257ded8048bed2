"""What each partner was sent: the index behind its DICOMweb retrieval and its study manifests.

Two collections, both keyed so that every question is an `_id` lookup (fast on any Mongo-wire server):
- `delivered_instances`, `_id = "<partner>/<study>/<series>/<sop>"` (UIDs as delivered): one per
  instance, what WADO-RS needs to find and check the object.
- `delivered_studies`, `_id = "<partner>/<study>"`: the study's manifest (one entry per instance,
  added with `$addToSet` of a deterministic sub-document, so a replayed delivery adds nothing) and
  when its last instance was delivered.
- `pending_studies`, `_id = "<partner>/<study>"`: studies that had a delivery since their last
  StudyComplete; small (only studies in flight), so the completeness sweep reads it whole.

The delivery stage writes both in one batch before it publishes the partner's feed, so a partner
never receives a reference it cannot fetch. A partner is only ever shown documents whose `_id`
starts with its own id: another partner's object is simply not found.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from pymongo import UpdateOne
from pymongo.database import Database

INSTANCES = "delivered_instances"
STUDIES = "delivered_studies"
PENDING = "pending_studies"


@dataclass(frozen=True)
class StoredReceipt:
    """The partner's gateway stored (or gave up on) one delivered instance."""

    partner_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    status: str  # "stored" | "dead_lettered"
    at_ms: int


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


def instance_key(partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{partner_id}/{study_uid}/{series_uid}/{sop_uid}"


def study_key(partner_id: str, study_uid: str) -> str:
    return f"{partner_id}/{study_uid}"


def _manifest_entry(item: DeliveredInstance) -> dict[str, object]:
    # Only what is the same on a replay: $addToSet then recognises the entry as already there.
    return {
        "series_uid": item.series_uid,
        "sop_uid": item.sop_uid,
        "sop_class_uid": item.sop_class_uid,
        "transfer_syntax_uid": item.transfer_syntax_uid,
        "modality": item.modality,
        "sha256": item.sha256,
        "size": item.size,
        "delivery_id": item.delivery_id,
    }


def _from_doc(doc: dict[str, object]) -> DeliveredInstance:
    fields = {k: doc[k] for k in DeliveredInstance.__dataclass_fields__ if k in doc}
    return DeliveredInstance(**fields)  # type: ignore[arg-type]


class DeliveredObjects:
    def __init__(self, db: Database) -> None:
        self._instances = db[INSTANCES]
        self._studies = db[STUDIES]
        self._pending = db[PENDING]

    def record(self, items: Iterable[DeliveredInstance]) -> None:
        """Idempotent: recording the same delivery twice leaves the same documents."""
        items = list(items)
        if not items:
            return
        self._instances.bulk_write(
            [
                UpdateOne(
                    {"_id": instance_key(i.partner_id, i.study_uid, i.series_uid, i.sop_uid)},
                    {"$setOnInsert": asdict(i)},
                    upsert=True,
                )
                for i in items
            ],
            ordered=False,
        )
        self._studies.bulk_write(
            [
                UpdateOne(
                    {"_id": study_key(i.partner_id, i.study_uid)},
                    {
                        "$setOnInsert": {"partner_id": i.partner_id, "study_uid": i.study_uid, "priority": i.priority},
                        "$addToSet": {"instances": _manifest_entry(i)},
                        "$max": {"last_delivered_at_ms": i.delivered_at_ms},
                    },
                    upsert=True,
                )
                for i in items
            ],
            ordered=False,
        )
        self._pending.bulk_write(
            [
                UpdateOne(
                    {"_id": study_key(i.partner_id, i.study_uid)},
                    {
                        "$setOnInsert": {"partner_id": i.partner_id, "study_uid": i.study_uid},
                        "$max": {"last_delivered_at_ms": i.delivered_at_ms},
                    },
                    upsert=True,
                )
                for i in items
            ],
            ordered=False,
        )

    def mark(self, receipts: Iterable[StoredReceipt]) -> None:
        """Record what the partners' gateways reported (idempotent: the first report of each kind wins)."""
        updates = [
            UpdateOne(
                {"_id": instance_key(r.partner_id, r.study_uid, r.series_uid, r.sop_uid)},
                {"$min": {f"{r.status}_at_ms": r.at_ms}},
            )
            for r in receipts
        ]
        if updates:
            self._instances.bulk_write(updates, ordered=False)

    def unstored(self) -> Iterator[DeliveredInstance]:
        """Deliveries no gateway has reported stored and that have not been declared expired (a scan:
        run it rarely; the retention watch does, every few minutes)."""
        query = {"stored_at_ms": {"$exists": False}, "expired_at_ms": {"$exists": False}}
        for doc in self._instances.find(query):
            yield _from_doc(doc)

    def mark_expired(self, items: Iterable[DeliveredInstance], at_ms: int) -> None:
        updates = [
            UpdateOne(
                {"_id": instance_key(i.partner_id, i.study_uid, i.series_uid, i.sop_uid)},
                {"$min": {"expired_at_ms": at_ms}},
            )
            for i in items
        ]
        if updates:
            self._instances.bulk_write(updates, ordered=False)

    def unstored_blobs(self) -> set[str]:
        """Every object (delivered copy or source) that a partner is still owed."""
        owed: set[str] = set()
        for doc in self._instances.find({"stored_at_ms": {"$exists": False}}, {"sha256": 1, "source_sha256": 1}):
            owed.add(doc["sha256"])
            if doc.get("source_sha256"):
                owed.add(doc["source_sha256"])
        return owed

    def stored_at(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> int | None:
        doc = self._instances.find_one({"_id": instance_key(partner_id, study_uid, series_uid, sop_uid)})
        return int(doc["stored_at_ms"]) if doc and "stored_at_ms" in doc else None

    def quiet_studies(self, delivered_before_ms: int) -> list[tuple[str, str, int]]:
        """(partner, study, last delivery ms) of pending studies with no delivery since the given time."""
        return [
            (doc["partner_id"], doc["study_uid"], int(doc["last_delivered_at_ms"]))
            for doc in self._pending.find({})
            if int(doc.get("last_delivered_at_ms", 0)) < delivered_before_ms
        ]

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
        entries = sorted(doc.get("instances", []), key=lambda e: (e["series_uid"], e["sop_uid"]))
        seen: set[str] = set()
        result = []
        for entry in entries:
            if entry["sop_uid"] in seen:
                continue
            seen.add(entry["sop_uid"])
            result.append(
                DeliveredInstance(
                    partner_id=partner_id,
                    study_uid=study_uid,
                    series_uid=entry["series_uid"],
                    sop_uid=entry["sop_uid"],
                    sop_class_uid=entry.get("sop_class_uid", ""),
                    transfer_syntax_uid=entry.get("transfer_syntax_uid", ""),
                    modality=entry.get("modality", ""),
                    sha256=entry["sha256"],
                    size=int(entry["size"]),
                    delivery_id=entry["delivery_id"],
                )
            )
        return result

    def series(self, partner_id: str, study_uid: str, series_uid: str) -> list[DeliveredInstance]:
        return [i for i in self.study(partner_id, study_uid) if i.series_uid == series_uid]

    def studies(self, partner_id: str) -> Iterator[dict[str, object]]:
        """Every study delivered to the partner: {study_uid, count, last_delivered_at_ms}."""
        for doc in self._studies.find(
            {"partner_id": partner_id}, {"study_uid": 1, "instances": 1, "last_delivered_at_ms": 1}
        ):
            yield {
                "study_uid": doc["study_uid"],
                "count": len({e["sop_uid"] for e in doc.get("instances", [])}),
                "last_delivered_at_ms": doc.get("last_delivered_at_ms", 0),
            }

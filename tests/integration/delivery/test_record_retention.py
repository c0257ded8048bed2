"""Forgetting what was delivered once it serves no one, on the real MongoDB-wire server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pymongo.database import Database

from services.common.settings import DAY_MS
from services.common.stores.partners import PartnerStore
from services.delivery import delivered as delivered_module
from services.delivery.delivered import DeliveredInstance, DeliveredObjects, StoredReceipt
from services.delivery.purge_state import PurgeState
from services.delivery.record_retention import PURGE_LEASE_MS, purge_records
from tests.integration.delivery.deliveries import delivered_item
from tests.integration.query_plans import scans

DAY0 = 20_000  # days since the epoch
RETENTION_DAYS = 90


def _item(n: int, study: str, day: int = DAY0) -> DeliveredInstance:
    return delivered_item(n, study=study, at_ms=day * DAY_MS + 1_000, delivery_id=f"{study}-d{n}")


def _stored(item: DeliveredInstance) -> StoredReceipt:
    return StoredReceipt(
        "lab", item.study_uid, item.series_uid, item.sop_uid, "stored", item.delivered_at_ms + 10, item.delivery_id
    )


def _deliver(
    delivered: DeliveredObjects, study: str, count: int, day: int = DAY0, stored: int | None = None, first: int = 0
) -> list[DeliveredInstance]:
    items = [_item(n, study, day) for n in range(first, first + count)]
    delivered.record(items)
    delivered.mark([_stored(i) for i in items[: count if stored is None else stored]])
    delivered.settle_receipts()
    return items


def _due(days_after: int = 0) -> int:
    """A time on the first day DAY0's studies may be forgotten, plus `days_after`."""
    return (DAY0 + RETENTION_DAYS + 1 + days_after) * DAY_MS + 5_000


def test_a_study_every_instance_of_which_was_stored_is_forgotten_after_the_retention(db: Database) -> None:
    delivered = DeliveredObjects(db)
    done = _deliver(delivered, "2.25.1", 3)
    owed = _deliver(delivered, "2.25.2", 3, stored=2)
    recent = _deliver(delivered, "2.25.3", 2, day=DAY0 + 50)
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due() - DAY_MS) == (0, 0), (
        "not a day early"
    )
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (1, 1)
    assert delivered.study("lab", "2.25.1") == []
    assert delivered.instance("lab", "2.25.1", done[0].series_uid, done[0].sop_uid) is None
    assert [s["study_uid"] for s in delivered.studies("lab")] == ["2.25.2", "2.25.3"]
    assert len(delivered.study("lab", "2.25.2")) == 3, "a partner still owed an instance keeps the study"
    assert owed[2].sha256 in delivered.unstored_blobs()
    assert len(delivered.study("lab", "2.25.3")) == 2
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(50)) == (1, 1), (
        "the owed study looked at again, kept"
    )
    assert delivered.study("lab", "2.25.3") == []
    assert recent  # delivered 50 days later, forgotten 50 days later
    assert db["delivered_pages"].count_documents({}) == 1 and db["delivered_instances"].count_documents({}) == 3
    delivered.ensure_indexes()
    assert not scans(db, "delivered_studies", {"last_day": DAY0}), "a day's studies are found through an index"


def test_a_study_delivered_to_again_or_corrected_keeps_what_is_new(db: Database) -> None:
    """A study delivered to again after its day keeps its record; an instance delivered again (a
    correction) while a purge was deciding keeps its new delivery."""
    delivered = DeliveredObjects(db)
    first = _deliver(delivered, "2.25.1", 2)
    _deliver(delivered, "2.25.1", 1, day=DAY0 + 95, first=2)  # delivered to again: its last day moved
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (0, 0)
    assert len(delivered.study("lab", "2.25.1")) == 3
    # A correction recorded between the purge's look and its deletes: the guard keeps it.
    other = _deliver(delivered, "2.25.2", 2)
    # Sent again today, with new content.
    corrected = replace(
        other[0], sha256="c" * 64, delivery_id="2.25.2-fix", delivered_at_ms=_due(), ingested_at_ms=_due()
    )
    real_find_one = delivered._instances.find_one
    calls = {"n": 0}

    def find_then_correct(*args: object, **kwargs: object) -> object:
        found = real_find_one(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # after the purge read the study's instances
            delivered.record([corrected])
        return found

    delivered._instances.find_one = find_then_correct  # type: ignore[method-assign]
    try:
        assert delivered.forget_study("lab", "2.25.2", DAY0) == "moved", "delivered to meanwhile"
    finally:
        delivered._instances.find_one = real_find_one  # type: ignore[method-assign]
    found = delivered.instance("lab", "2.25.2", corrected.series_uid, corrected.sop_uid)
    assert found is not None and found.sha256 == "c" * 64
    assert "c" * 64 in delivered.unstored_blobs()
    # Its pages stay (the other instance, stored, lost its record: its object went long ago).
    assert [i.sha256 for i in delivered.study("lab", "2.25.2")] == ["c" * 64, other[1].sha256]
    assert first


def test_studies_recorded_before_their_last_day_was_kept_are_purged_too(db: Database) -> None:
    delivered = DeliveredObjects(db)
    _deliver(delivered, "2.25.1", 2)
    db["delivered_studies"].update_many({}, {"$unset": {"last_day": ""}})
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (1, 0)
    assert delivered.study("lab", "2.25.1") == []
    # The next run starts where this one stopped: nothing is read again.
    assert PurgeState(db).purged_through() == DAY0


def test_studies_an_earlier_release_records_after_the_first_purge_are_purged_too(db: Database) -> None:
    """A rolling upgrade's older replicas (or a rollback) record studies without a last day after the
    purge's first run gave every study then recorded one: they were kept for ever."""
    delivered = DeliveredObjects(db)
    _deliver(delivered, "2.25.1", 1)
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (1, 0)
    _deliver(delivered, "2.25.2", 2, day=DAY0 + 5)
    _deliver(delivered, "2.25.3", 1, day=DAY0 - 30)  # its day long done: it takes the next one due
    db["delivered_studies"].update_many({}, {"$unset": {"last_day": ""}})
    # The first run's scan found none: the next is a week later (on FerretDB it reads every study).
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(1)) == (0, 0)
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(4)) == (0, 0)
    assert delivered.study("lab", "2.25.3") != []
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(7)) == (2, 0)
    assert delivered.study("lab", "2.25.3") == [] and delivered.study("lab", "2.25.2") == []
    # It found some: the next scan is the next day.
    _deliver(delivered, "2.25.4", 1, day=DAY0 + 8)
    db["delivered_studies"].update_many({"study_uid": "2.25.4"}, {"$unset": {"last_day": ""}})
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(8)) == (1, 0)


def test_a_stored_delivery_an_earlier_release_left_flagged_owed_does_not_hold_its_study(db: Database) -> None:
    """An older replica folded its "stored" receipt without removing the owed flag: the purge puts that
    right itself, as the retention watch and the blob collection do, and does not hold the study for ever."""
    delivered = DeliveredObjects(db, flag_sweep_s=0)
    _deliver(delivered, "2.25.1", 2)
    db["delivered_instances"].update_many({}, {"$set": {"owed": True}})
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (1, 0)


def test_a_study_kept_as_owed_is_forgotten_once_its_last_instance_is_stored(db: Database) -> None:
    delivered = DeliveredObjects(db)
    items = _deliver(delivered, "2.25.1", 3, stored=2)
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (0, 1)
    delivered.mark([_stored(items[2])])  # folded by the purge itself
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(1)) == (1, 0)
    assert delivered.study("lab", "2.25.1") == [] and PurgeState(db).held_studies() == []


def test_a_correction_recorded_while_the_purge_deletes_its_instance_keeps_its_record(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge deletes the old instance between the correction's look (already there) and its update
    (which then matches nothing): the correction is inserted again."""
    delivered = DeliveredObjects(db)
    old = _deliver(delivered, "2.25.1", 1)[0]
    corrected = replace(old, sha256="c" * 64, delivery_id="fix", delivered_at_ms=_due(), ingested_at_ms=_due())
    real_insert_new = delivered_module.insert_new

    def insert_then_purge(collection: Any, docs: Any) -> set[int]:
        present = real_insert_new(collection, docs)
        if collection.name == "delivered_instances" and present and not hasattr(insert_then_purge, "done"):
            insert_then_purge.done = True  # type: ignore[attr-defined]
            assert delivered.forget_study("lab", "2.25.1", DAY0) == "forgotten"
        return present

    monkeypatch.setattr(delivered_module, "insert_new", insert_then_purge)
    delivered.record([corrected])
    found = delivered.instance("lab", "2.25.1", old.series_uid, old.sop_uid)
    assert found is not None and found.sha256 == "c" * 64
    assert "c" * 64 in delivered.unstored_blobs()
    assert [i.sha256 for i in delivered.study("lab", "2.25.1")] == ["c" * 64]


def test_a_study_an_earlier_release_delivered_to_again_is_kept_until_its_own_day(db: Database) -> None:
    """An earlier release moved only the study's last delivery time, not its last day."""
    delivered = DeliveredObjects(db)
    _deliver(delivered, "2.25.1", 1)
    later = (DAY0 + 60) * DAY_MS
    db["delivered_studies"].update_one({}, {"$max": {"last_delivered_at_ms": later}})
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (0, 0)
    assert len(delivered.study("lab", "2.25.1")) == 1
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(60)) == (1, 0)


def test_one_replica_purges_at_a_time(db: Database) -> None:
    _deliver(DeliveredObjects(db), "2.25.1", 1)
    first, second = PurgeState(db), PurgeState(db)
    assert first.take_lease(_due(), PURGE_LEASE_MS)  # the first one's run begins
    delivered = DeliveredObjects(db)
    assert purge_records(delivered, second, RETENTION_DAYS, lambda: _due() + 60_000) == (0, 0), "the first one's runs"
    assert purge_records(delivered, second, RETENTION_DAYS, lambda: _due() + PURGE_LEASE_MS + 1) == (1, 0)


def test_a_study_delivered_to_while_the_purge_deletes_keeps_its_pages_until_its_new_day(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge read the study before a replay of its batch was recorded, and deletes after: the study,
    delivered to again, keeps its record and pages (every instance still recorded stays listed), and the
    purge of its new day leaves nothing behind."""
    delivered = DeliveredObjects(db)
    items = _deliver(delivered, "2.25.1", 2)
    as_read = db["delivered_studies"].find_one({})
    later = DAY0 + 10
    delivered.record([replace(i, delivered_at_ms=later * DAY_MS) for i in items])  # replayed: the clock's time
    monkeypatch.setattr(delivered._studies, "find_one", lambda *a, **k: as_read)
    assert delivered.forget_study("lab", "2.25.1", DAY0) == "moved"
    monkeypatch.undo()
    assert [s["study_uid"] for s in delivered.studies("lab")] == ["2.25.1"]
    assert len(delivered.study("lab", "2.25.1")) == 2, "its pages stay"
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due(10)) == (1, 0)
    assert [db[c].count_documents({}) for c in ("delivered_instances", "delivered_pages", "delivered_studies")] == [
        0,
        0,
        0,
    ]


def test_a_retired_partners_studies_go_even_if_never_stored(db: Database) -> None:
    """A removed partner is owed nothing (the blob lifecycle keeps nothing for it either)."""
    delivered = DeliveredObjects(db)
    _deliver(delivered, "2.25.1", 2, stored=0)
    PartnerStore(db).retire("lab")
    assert purge_records(delivered, PurgeState(db), RETENTION_DAYS, lambda: _due()) == (1, 0)
    assert db["delivered_instances"].count_documents({}) == 0


def test_the_purge_lease_is_held_renewed_and_lost(db: Database) -> None:
    first, second = PurgeState(db), PurgeState(db)
    assert first.take_lease(1_000, 600)
    assert not second.take_lease(1_500, 600), "held by another"
    assert first.take_lease(1_500, 600), "renewed by its holder"
    assert second.take_lease(2_101, 600), "taken once it ran out"
    assert not first.take_lease(2_200, 600), "lost: its holder stops"


def test_a_hold_of_another_day_is_not_released(db: Database) -> None:
    state = PurgeState(db)
    state.hold("lab", "2.25.1", DAY0 + 3)
    state.release("lab", "2.25.1", DAY0)
    assert state.held_studies() == [("lab", "2.25.1", DAY0 + 3)]

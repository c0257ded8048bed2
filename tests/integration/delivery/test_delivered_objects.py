"""What each partner was sent, on the real MongoDB-wire server: the index behind its DICOMweb retrieval,
study manifests, and the StudyComplete announced once a study has gone quiet."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from services.common.blob_lifecycle import collect
from services.common.blob_store import LocalBlobStore
from services.common.events import EVENT_TYPE_HEADER
from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.delivery import delivered as delivered_module
from services.delivery.completeness import CompletenessSweep
from services.delivery.delivered import INSTANCES, RECEIPTS, DeliveredInstance, DeliveredObjects, StoredReceipt
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.delivery.deliveries import delivered_item
from tests.integration.query_plans import scans

STUDY = "2.25.100"
WEEK_MS = 7 * 24 * 3600 * 1000


def _item(n: int, partner: str = "lab", study: str = STUDY, at_ms: int = 1_000) -> DeliveredInstance:
    return delivered_item(n, partner, study, at_ms)


def test_a_replayed_batch_records_nothing_twice_and_partners_see_only_their_own(db: Database) -> None:
    delivered = DeliveredObjects(db)
    batch = [_item(n) for n in range(3)]
    delivered.record(batch)
    delivered.record(batch)  # the bus replays a batch after a crash
    assert [i.sop_uid for i in delivered.study("lab", STUDY)] == [f"{STUDY}.1.{n}" for n in range(3)]
    assert delivered.instance("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.2") == batch[2]
    assert delivered.series("lab", STUDY, f"{STUDY}.1") == delivered.study("lab", STUDY)
    assert delivered.instance("other", STUDY, f"{STUDY}.1", f"{STUDY}.1.2") is None
    assert delivered.study("other", STUDY) == []
    assert list(delivered.studies("lab")) == [{"study_uid": STUDY, "last_delivered_at_ms": 1_002}]


def test_a_quiet_study_is_announced_once_with_its_manifest_and_again_when_it_grows(db: Database) -> None:
    delivered = DeliveredObjects(db)
    published: list[OutgoingMessage] = []
    now = [10_000]
    sweep = CompletenessSweep(delivered, published.extend, Topics("t."), quiet_s=5, clock=lambda: now[0])
    delivered.record([_item(n, at_ms=now[0] - 1_000) for n in range(3)])
    assert sweep.sweep_once() == 0, "still inside the quiet period"

    now[0] += 5_000
    assert sweep.sweep_once() == 1
    assert sweep.sweep_once() == 0, "announced once"
    (message,) = published
    assert message.topic == "t.imx.partner.lab.v1" and message.headers[EVENT_TYPE_HEADER] == b"StudyComplete"
    event = events_pb2.StudyComplete.FromString(message.value)
    assert (event.partner_id, event.study_instance_uid, event.count) == ("lab", STUDY, 3)
    assert [(e.sop_instance_uid, e.sha256) for e in event.instances] == [
        (f"{STUDY}.1.{n}", f"{n:064x}") for n in range(3)
    ]

    # A late instance: the study is announced again, with the larger manifest and a new id.
    delivered.record([replace(_item(3), delivered_at_ms=now[0])])
    now[0] += 6_000
    assert sweep.sweep_once() == 1
    again = events_pb2.StudyComplete.FromString(published[-1].value)
    assert again.count == 4 and again.meta.event_id != event.meta.event_id


def test_nothing_still_owed_to_a_partner_is_ever_deleted(db: Database, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    delivered = DeliveredObjects(db)
    source, copy_a, copy_b, orphan = (store.put(bytes([n]) * 64) for n in range(4))
    # Two partners were sent de-identified copies of one source; only A has stored its copy.
    delivered.record(
        [
            replace(_item(1, partner="a"), sha256=copy_a, source_sha256=source),
            replace(_item(1, partner="b"), sha256=copy_b, source_sha256=source),
        ]
    )
    delivered.mark([StoredReceipt("a", STUDY, f"{STUDY}.1", f"{STUDY}.1.1", "stored", 5_000)])
    for sha in (source, copy_a, copy_b, orphan):
        old = time.time() - 30 * 24 * 3600
        os.utime(store.path_for(sha), (old, old))

    result = collect(store.root, delivered.unstored_blobs, retention_s=7 * 24 * 3600)
    assert (result.deleted, result.kept_owed) == (2, 2)
    assert store.exists(source) and store.exists(copy_b), "B is still owed its copy, and the source"
    assert not store.exists(copy_a) and not store.exists(orphan)
    assert delivered.stored_at("a", STUDY, f"{STUDY}.1", f"{STUDY}.1.1") == 5_000

    # B's gateway dead-letters the instance: still owed (it can be replayed), so still kept.
    delivered.mark([StoredReceipt("b", STUDY, f"{STUDY}.1", f"{STUDY}.1.1", "dead_lettered", 6_000)])
    assert collect(store.root, delivered.unstored_blobs, retention_s=7 * 24 * 3600).deleted == 0
    delivered.mark([StoredReceipt("b", STUDY, f"{STUDY}.1", f"{STUDY}.1.1", "stored", 7_000)])
    assert collect(store.root, delivered.unstored_blobs, retention_s=7 * 24 * 3600).deleted == 2


def test_recording_a_large_study_in_batches_stays_cheap(db: Database) -> None:
    """No document grows per instance: 1,000 instances of one study in batches of 200 are recorded in
    about the time of one write per instance (the old manifest, grown one instance at a time, stalled)."""
    delivered = DeliveredObjects(db)
    items = [_item(n) for n in range(1000)]
    started = time.monotonic()
    for start in range(0, 1000, 200):
        delivered.record(items[start : start + 200])
    delivered.record(items[400:600])  # a replayed batch
    elapsed = time.monotonic() - started
    study = delivered.study("lab", STUDY)
    assert len(study) == 1000 and study[0].sop_uid == f"{STUDY}.1.0"
    assert len({i.sop_uid for i in study}) == 1000, "a replayed batch lists nothing twice"
    print(f"recorded 1,200 deliveries of one study in {elapsed:.2f} s")


def test_an_instance_resent_with_new_content_replaces_the_older_delivery(db: Database) -> None:
    """A corrected image keeps its SOP Instance UID: the partner must be able to fetch the new object,
    whose SHA-256 its feed announces, and the new one is owed until its gateway stores it."""
    delivered = DeliveredObjects(db)
    first = _item(1, at_ms=1_000)
    corrected = _corrected(first)
    delivered.record([first])
    delivered.mark([StoredReceipt("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.1", "stored", 1_500)])
    delivered.record([corrected])
    delivered.record([first])  # a late replay of the older delivery changes nothing
    # nor with the delivery time a replay really has: the clock's again (its ingest time is carried)
    delivered.record([replace(first, delivered_at_ms=3_000)])
    found = delivered.instance("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.1")
    assert found is not None and (found.sha256, found.delivery_id) == ("c" * 64, "d1-corrected")
    assert delivered.stored_at("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.1") is None, "the new object is owed"
    assert "c" * 64 in delivered.unstored_blobs()
    assert [(i.sha256, i.size) for i in delivered.study("lab", STUDY)] == [("c" * 64, 999)]


def _corrected(item: DeliveredInstance, later_ms: int = 1_000, sha: str = "c") -> DeliveredInstance:
    """The same SOP Instance UID sent again with new content, ingested and delivered `later_ms` after."""
    return replace(
        item,
        sha256=sha * 64,
        size=999,
        delivery_id=f"{item.delivery_id}-corrected",
        delivered_at_ms=item.delivered_at_ms + later_ms,
        ingested_at_ms=item.ingested_at_ms + later_ms,
    )


def _views(delivered: DeliveredObjects, partner: str = "lab") -> tuple[str | None, list[str]]:
    """The instance's object as WADO-RS finds it, and the study's as its manifest lists them."""
    found = delivered.instance(partner, STUDY, f"{STUDY}.1", f"{STUDY}.1.1")
    return (found.sha256 if found else None), [i.sha256 for i in delivered.study(partner, STUDY)]


def test_an_older_send_recorded_after_the_correction_loses_in_every_view(db: Database) -> None:
    """The original and its correction took different lanes and the original was recorded last: the
    partner is still served the correction, by WADO-RS and in the study's manifest alike, and it is the
    correction that is owed."""
    delivered = DeliveredObjects(db)
    first = _item(1, at_ms=1_000)
    corrected = _corrected(first)
    delivered.record([corrected])
    delivered.record([replace(first, delivered_at_ms=corrected.delivered_at_ms + 500)])
    assert _views(delivered) == ("c" * 64, ["c" * 64])
    assert "c" * 64 in delivered.unstored_blobs()
    assert [i.delivery_id for i in delivered.unstored()] == ["d1-corrected"]


def test_two_versions_ingested_together_settle_on_one_whatever_the_order_and_replays(db: Database) -> None:
    """Two contents for one SOP UID in one ingest commit group share its time: one of them wins, the
    same one whichever is recorded first and however often either is replayed, in both views."""
    outcomes: set[tuple[str | None, tuple[str, ...]]] = set()
    for partner, order in (("lab-a", "ab"), ("lab-b", "ba")):
        a = replace(_item(1, partner=partner), sha256="a" * 64, delivery_id="d1-a")
        b = replace(a, sha256="b" * 64, delivery_id="d1-b")
        versions = {"a": a, "b": b}
        delivered = DeliveredObjects(db)
        for step, name in enumerate(order + order):  # each recorded, then each replayed: the clock's time
            delivered.record([replace(versions[name], delivered_at_ms=versions[name].delivered_at_ms + step)])
            sha, manifest = _views(delivered, partner)
            assert manifest == [sha], "WADO-RS and the manifest agree after every step"
        sha, manifest = _views(delivered, partner)
        outcomes.add((sha, tuple(manifest)))
    assert len(outcomes) == 1


def test_a_delivery_sent_again_after_its_correction_is_current_whichever_copy_came_first(db: Database) -> None:
    """Ingest publishes an event again under its id, with the new send's time, when its "published"
    mark was lost: the original re-sent after its correction is then the newest, in both views, whether
    or not its first copy was recorded before the correction."""
    winners = set()
    for partner, order in (("lab-a", ("A1", "B2", "A3")), ("lab-b", ("A1", "A3", "B2")), ("lab-c", ("B2", "A3", "A1"))):
        original = replace(_item(1, partner=partner), ingested_at_ms=1_000)
        sends = {
            "A1": original,
            "B2": replace(_corrected(original), ingested_at_ms=2_000),
            "A3": replace(original, ingested_at_ms=3_000, delivered_at_ms=original.delivered_at_ms + 5_000),
        }
        delivered = DeliveredObjects(db)
        for name in order:
            delivered.record([sends[name]])
        sha, manifest = _views(delivered, partner)
        assert manifest == [sha]
        winners.add(sha)
        assert original.sha256 in delivered.unstored_blobs()
    assert winners == {_item(1).sha256}


def test_two_versions_in_one_batch_and_a_manifest_recorded_out_of_order_agree(db: Database) -> None:
    """Both contents of one SOP UID in one consumed batch, and a manifest whose later page holds the
    older send (recorded so before this order was kept): the study lists what WADO-RS serves."""
    delivered = DeliveredObjects(db)
    first = _item(1)
    corrected = _corrected(first)
    delivered.record([corrected, first])
    assert _views(delivered) == ("c" * 64, ["c" * 64])
    # As an earlier release left it: the correction's page first, the older send's page after it.
    delivered.record([replace(_item(1, partner="old"), delivery_id="d1-corrected", sha256="c" * 64)])
    db["delivered_studies"].update_one({"_id": f"old/{STUDY}"}, {"$push": {"pages": "older"}})
    db["delivered_pages"].insert_one(
        {"_id": f"old/{STUDY}#older", "entries": [{**delivered_module._manifest_entry(first), "delivery_id": "d1"}]}
    )
    assert _views(delivered, "old") == ("c" * 64, ["c" * 64])


class _Writes(monitoring.CommandListener):
    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update", "delete"):
            self.writes.append((event.command_name, str(event.command.get(event.command_name))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _stored(n: int, at_ms: int = 5_000, delivery_id: str | None = None) -> StoredReceipt:
    return StoredReceipt(
        "lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.{n}", "stored", at_ms, f"d{n}" if delivery_id is None else delivery_id
    )


def test_a_batch_of_receipts_is_one_insert_and_is_applied_when_what_is_owed_is_asked(
    mongo_uri: str, db: Database
) -> None:
    """The stage's write per batch of receipts is one insert of one page (not an update per instance);
    the readers of what is owed fold the pages in first, and a replayed batch is the same page."""
    writes = _Writes()
    client: MongoClient = MongoClient(mongo_uri, event_listeners=[writes])
    try:
        delivered = DeliveredObjects(client[db.name])
        delivered.record([_item(n) for n in range(40)])
        writes.writes.clear()
        batch = [_stored(n) for n in range(30)]
        delivered.mark(batch)
        assert writes.writes == [("insert", RECEIPTS)]
        delivered.mark(list(reversed(batch)))  # the same batch, replayed after a crash
        assert db[RECEIPTS].count_documents({}) == 1
        owed = {i.sop_uid for i in delivered.unstored()}
        assert owed == {f"{STUDY}.1.{n}" for n in range(30, 40)}
        assert db[RECEIPTS].count_documents({}) == 0, "folded pages are dropped"
        assert delivered.stored_at("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.3") == 5_000
        delivered.mark([_stored(3, at_ms=9_000)])  # a later duplicate receipt: the first report stands
        assert delivered.stored_at("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.3") == 5_000
    finally:
        client.close()


def test_a_receipt_for_an_older_delivery_does_not_mark_the_newer_one(db: Database) -> None:
    """Folded after the instance was delivered again with new content, a receipt of the older delivery
    (by its id, or without one but older than the new delivery) leaves the new object owed."""
    delivered = DeliveredObjects(db)
    first, other = _item(1, at_ms=1_000), _item(2, at_ms=1_000)
    delivered.record([first, other])
    delivered.mark([_stored(1, at_ms=1_500), _stored(2, at_ms=1_500, delivery_id="")])
    delivered.record(
        [
            _corrected(first),
            _corrected(other, sha="e"),
        ]
    )
    assert {i.sop_uid for i in delivered.unstored()} == {first.sop_uid, other.sop_uid}
    assert {"c" * 64, "e" * 64} <= delivered.unstored_blobs()
    delivered.mark([_stored(1, at_ms=2_500, delivery_id="d1-corrected"), _stored(2, at_ms=2_500, delivery_id="")])
    assert list(delivered.unstored()) == []


def test_a_bulk_studys_announcement_goes_on_the_bulk_lane_after_its_instances(db: Database) -> None:
    """The manifest kept no lane: every study was announced on the routine lane, which a partner's
    gateway reads before bulk, so a bulk study was checked before its instances were stored and
    reported incomplete for good."""
    delivered = DeliveredObjects(db)
    published: list[OutgoingMessage] = []
    now = [10_000]
    sweep = CompletenessSweep(delivered, published.extend, Topics("t."), quiet_s=5, clock=lambda: now[0])
    bulk, urgent = events_pb2.PRIORITY_CLASS_BULK, events_pb2.PRIORITY_CLASS_URGENT
    delivered.record([replace(_item(n, at_ms=now[0] - 1_000), priority=bulk) for n in range(3)])
    delivered.record([replace(_item(n, study="2.25.200", at_ms=now[0] - 1_000), priority=urgent) for n in range(2)])
    assert {i.priority for i in delivered.study("lab", STUDY)} == {bulk}
    now[0] += 5_000
    assert sweep.sweep_once() == 2
    topics = {events_pb2.StudyComplete.FromString(m.value).study_instance_uid: m.topic for m in published}
    assert topics == {STUDY: "t.imx.partner.lab.bulk.v1", "2.25.200": "t.imx.partner.lab.urgent.v1"}


def test_a_dead_lettered_delivery_is_not_one_the_partner_never_read(db: Database) -> None:
    """The gateway read it and dead-lettered it: its feed message expiring loses nothing, yet the
    retention watch reported it failed as "expired-unread"."""
    delivered = DeliveredObjects(db)
    delivered.record([_item(n) for n in range(3)])
    dead = StoredReceipt("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.1", "dead_lettered", 5_000, "d1")
    delivered.mark([_stored(0), dead])
    assert [i.sop_uid for i in delivered.unstored()] == [f"{STUDY}.1.2"]


class _Finds(monitoring.CommandListener):
    """The filters of the finds sent to one collection."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.filters: list[dict[str, object]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == self.collection:
            self.filters.append(dict(event.command.get("filter", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_what_is_owed_is_read_through_an_index_not_a_scan_of_every_delivery(mongo_uri: str, db: Database) -> None:
    """The retention watch (every five minutes) and the blob collection ask what partners are still owed.
    A filter on a missing field read every delivery ever recorded (10.2-11.6 s at 100,000 on the devstack's
    FerretDB); both questions are now answered by an index, whatever else the collection holds."""
    finds = _Finds(INSTANCES)
    client: MongoClient = MongoClient(mongo_uri, event_listeners=[finds])
    try:
        delivered = DeliveredObjects(client[db.name])
        delivered.ensure_indexes()
        delivered.record([_item(n) for n in range(300)])
        delivered.mark([_stored(n) for n in range(290)])
        assert {i.sop_uid for i in delivered.unstored()} == {f"{STUDY}.1.{n}" for n in range(290, 300)}
        assert delivered.unstored_blobs() == {_item(n).sha256 for n in range(290, 300)}
        owed_filters = [f for f in finds.filters if "_id" not in f]
        assert len(owed_filters) == 2
        for query in owed_filters:
            assert not scans(client[db.name], INSTANCES, query), query
    finally:
        client.close()


def test_a_partners_study_list_is_read_through_an_index(db: Database) -> None:
    """QIDO's `/studies` without a UID, and the check before an id is given to a new partner, read the
    partner's studies: through an index on the partner, not a scan of every partner's."""
    delivered = DeliveredObjects(db)
    delivered.ensure_indexes()
    delivered.record([_item(1, partner=f"lab-{n}", study=f"2.25.{n}") for n in range(50)])
    assert [s["study_uid"] for s in delivered.studies("lab-7")] == ["2.25.7"]
    assert delivered.delivered_to("lab-7") and not delivered.delivered_to("lab-x")
    assert not scans(db, "delivered_studies", {"partner_id": "lab-7"})


def test_a_partners_study_list_is_narrowed_by_its_studies_modalities_and_sop_classes(db: Database) -> None:
    """QIDO's `/studies?Modality=MR` read the manifest of every study the partner was sent; the list is now
    narrowed first. A study recorded before the study kept them is always listed (its manifest decides)."""
    delivered = DeliveredObjects(db)
    delivered.ensure_indexes()
    ct, mr = _item(1, study="2.25.1"), replace(_item(1, study="2.25.2"), modality="MR", sop_class_uid="1.2.3.4")
    delivered.record([ct, replace(_item(2, study="2.25.1"), modality="CT"), mr])
    delivered.record([_item(1, study="2.25.3")])
    # Begun by an earlier release (no values, no flag), then a CT batch recorded by this one: its first
    # batch's modality is not among those kept.
    db["delivered_studies"].update_one(
        {"_id": "lab/2.25.3"}, {"$unset": {"modalities": "", "sop_classes": "", "narrowable": ""}}
    )
    delivered.record([replace(_item(2, study="2.25.3"), modality="CT")])

    def listed(**narrowed: frozenset[str]) -> list[str]:
        return sorted(str(s["study_uid"]) for s in delivered.studies("lab", narrowed))

    assert listed() == ["2.25.1", "2.25.2", "2.25.3"]
    assert listed(modality=frozenset({"MR"})) == ["2.25.2", "2.25.3"]
    assert listed(modality=frozenset({"CT", "US"})) == ["2.25.1", "2.25.3"]
    assert listed(modality=frozenset({"MR"}), sop_class_uid=frozenset({"1.2.840.10008.5.1.4.1.1.2"})) == ["2.25.3"]
    assert listed(sop_uid=frozenset({"2.25.1.1.1"})) == ["2.25.1", "2.25.2", "2.25.3"], "not narrowed by others"


def test_deliveries_recorded_without_the_owed_flag_are_owed_once_looked_for(db: Database) -> None:
    """A release before the flag, or an older replica during a rolling upgrade, recorded deliveries
    without it: the first question after `flag_sweep_s` flags the unstored ones, and only those."""
    earlier = DeliveredObjects(db)
    earlier.record([_item(n) for n in range(4)])
    earlier.mark([_stored(0)])
    earlier.settle_receipts()
    # As the earlier release left them: no flag on any.
    db[INSTANCES].update_many({}, {"$unset": {"owed": ""}})
    daily = DeliveredObjects(db)
    assert daily.unstored_blobs() == {_item(n).sha256 for n in (1, 2, 3)}, "the first question looks"
    db[INSTANCES].update_one({"_id": f"lab/{STUDY}/{STUDY}.1/{STUDY}.1.3"}, {"$unset": {"owed": ""}})
    assert _item(3).sha256 not in daily.unstored_blobs(), "not looked for again within a day"
    assert _item(3).sha256 in DeliveredObjects(db, flag_sweep_s=0).unstored_blobs()
    assert {i.sop_uid for i in daily.unstored()} == {f"{STUDY}.1.{n}" for n in (1, 2, 3)}


def test_a_receipt_an_earlier_release_folded_does_not_keep_its_delivery_owed(db: Database) -> None:
    """An older replica folds a "stored" receipt without removing the flag (and drops its page): the
    next look unflags it, so its objects are not kept, nor the delivery reported unread, for ever."""
    delivered = DeliveredObjects(db, flag_sweep_s=0)
    delivered.record([_item(1), _item(2)])
    # What the earlier release's fold did: the stored time, the flag left as it was.
    db[INSTANCES].update_one({"_id": f"lab/{STUDY}/{STUDY}.1/{STUDY}.1.1"}, {"$min": {"stored_at_ms": 5_000}})
    assert delivered.unstored_blobs() == {_item(2).sha256}
    assert [i.sop_uid for i in delivered.unstored()] == [f"{STUDY}.1.2"]


def test_a_correction_of_a_stored_instance_is_owed_again_and_its_receipt_settles_it(db: Database) -> None:
    delivered = DeliveredObjects(db)
    first = _item(1)
    delivered.record([first])
    delivered.mark([_stored(1)])
    assert delivered.unstored_blobs() == set()
    corrected = _corrected(first)
    delivered.record([corrected])
    assert delivered.unstored_blobs() == {corrected.sha256}
    delivered.mark([_stored(1, at_ms=9_000, delivery_id=corrected.delivery_id)])
    assert delivered.unstored_blobs() == set()
    delivered.record([first])  # a replay of the older delivery: nothing owed again
    assert delivered.unstored_blobs() == set()


def test_the_first_stores_receipt_does_not_settle_the_same_delivery_sent_again_over_its_correction(
    db: Database,
) -> None:
    """The original stored, then its correction, then the original published again newer still (ingest
    publishes an event again under its id when its mark was lost): the gateway stores it over the
    correction. The first store's receipt, folded only now, is about the first send and leaves the new one
    owed; the new send's receipt settles it."""
    delivered = DeliveredObjects(db)
    original = replace(_item(1), ingested_at_ms=1_000)
    first_store = replace(_stored(1, at_ms=1_500), ingested_at_ms=1_000)
    delivered.record([original])
    delivered.record([replace(_corrected(original), ingested_at_ms=2_000)])
    delivered.mark([replace(_stored(1, at_ms=2_500, delivery_id="d1-corrected"), ingested_at_ms=2_000)])
    delivered.record([replace(original, ingested_at_ms=3_000)])
    delivered.mark([first_store])
    assert delivered.unstored_blobs() == {original.sha256}, "the first store's receipt is not the new send's"
    delivered.mark([replace(_stored(1, at_ms=3_500), ingested_at_ms=3_000)])
    assert delivered.unstored_blobs() == set()


def test_an_older_send_stored_after_the_newer_one_leaves_the_newer_owed_in_either_order(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Gateway replicas keep a state folder each: one that never saw the correction stores the original
    over it. Its receipt, later than the correction's, says the partner holds the original: the
    correction is owed again (its object kept), whichever receipt is folded first; a later store of the
    correction settles it, and an original stored before the correction changes nothing."""
    delivered = DeliveredObjects(db)
    originals = [replace(_item(n), ingested_at_ms=1_000) for n in (1, 2, 3)]
    delivered.record(originals)
    delivered.record([replace(_corrected(o), ingested_at_ms=2_000) for o in originals])

    def fix_stored(n: int, at_ms: int) -> StoredReceipt:
        return replace(_stored(n, at_ms=at_ms, delivery_id=f"d{n}-corrected"), ingested_at_ms=2_000)

    def original_stored(n: int, at_ms: int) -> StoredReceipt:
        return replace(_stored(n, at_ms=at_ms), ingested_at_ms=1_000)

    delivered.mark([fix_stored(1, 2_500)])
    delivered.settle_receipts()
    delivered.mark([original_stored(1, 3_000)])  # folded after the correction's
    delivered.mark([original_stored(2, 3_000)])
    with caplog.at_level(logging.WARNING, logger="services.delivery.delivered"):
        delivered.settle_receipts()
    assert [r.__dict__.get("instances") for r in caplog.records if "owed again" in r.getMessage()] == [1]
    delivered.mark([fix_stored(2, 2_500)])  # folded after the original's
    delivered.mark([original_stored(3, 2_000), fix_stored(3, 2_500)])  # the original first: nothing owed
    owed = {i.sop_uid for i in delivered.unstored()}
    assert owed == {originals[0].sop_uid, originals[1].sop_uid}
    assert delivered.stored_at("lab", STUDY, f"{STUDY}.1", originals[0].sop_uid) is None
    assert delivered.unstored_blobs() == {"c" * 64}, "the corrections' object is kept"

    delivered.mark([fix_stored(1, 4_000), fix_stored(2, 4_000)])  # stored again, over the original
    assert list(delivered.unstored()) == []
    assert delivered.stored_at("lab", STUDY, f"{STUDY}.1", originals[0].sop_uid) == 4_000


def test_a_store_of_the_newer_delivery_again_after_the_older_one_is_what_counts_in_any_fold_order(
    db: Database,
) -> None:
    """The correction stored (2,500), the original over it (3,000), the correction again (4,000): the
    partner holds the correction, whichever order the receipts are folded in. A newer send recorded
    afterwards starts afresh: its store counts even by a clock behind the one that stored the original
    (each replica reports by its own)."""
    delivered = DeliveredObjects(db)
    original = replace(_item(1), ingested_at_ms=1_000)
    delivered.record([original])
    delivered.record([replace(_corrected(original), ingested_at_ms=2_000)])
    fix = replace(_stored(1, delivery_id="d1-corrected"), ingested_at_ms=2_000)
    over = replace(_stored(1, at_ms=3_000), ingested_at_ms=1_000)
    for receipt in (replace(fix, at_ms=4_000), replace(fix, at_ms=2_500), over):  # each folded on its own
        delivered.mark([receipt])
        delivered.settle_receipts()
    assert list(delivered.unstored()) == []

    newest = replace(_corrected(original, sha="e"), delivery_id="d1-again", ingested_at_ms=5_000)
    delivered.record([newest])
    delivered.mark([replace(_stored(1, at_ms=2_800, delivery_id="d1-again"), ingested_at_ms=5_000)])
    assert list(delivered.unstored()) == [], "the original's store was reported before this send was recorded"


def test_a_delivery_ingested_again_is_owed_until_its_latest_sends_receipt(db: Database) -> None:
    """Stored and settled, then published again with a later ingest time: owed again (the partner may hold
    another delivery of the instance by then) until the receipt of that send, the gateway's repeat
    ("duplicate", under the first store's id and time) when its target still holds it. A receipt page
    written by an earlier release of delivery names no send, and settles it as before."""
    delivered = DeliveredObjects(db)
    original, other = replace(_item(1), ingested_at_ms=1_000), replace(_item(2), ingested_at_ms=1_000)
    delivered.record([original, other])
    delivered.mark([replace(_stored(n, at_ms=1_500), ingested_at_ms=1_000) for n in (1, 2)])
    assert delivered.unstored_blobs() == set()
    delivered.record([replace(original, ingested_at_ms=3_000), replace(other, ingested_at_ms=3_000)])
    assert delivered.unstored_blobs() == {original.sha256, other.sha256}
    delivered.mark([replace(_stored(1, at_ms=1_500), ingested_at_ms=1_000)])  # the first receipt, again
    assert delivered.unstored_blobs() == {original.sha256, other.sha256}
    delivered.mark([replace(_stored(1, at_ms=1_500), ingested_at_ms=3_000), _stored(2, at_ms=1_500)])
    assert delivered.unstored_blobs() == set()
    assert delivered.stored_at("lab", STUDY, f"{STUDY}.1", f"{STUDY}.1.1") == 1_500
    delivered.record([replace(original, ingested_at_ms=2_000)])  # an older send replayed: nothing owed
    assert delivered.unstored_blobs() == set()


def test_a_delivery_sent_again_is_dated_by_its_new_send_and_one_listed_before_it_is_not_marked_expired(
    db: Database,
) -> None:
    """The retention watch dates what is on the feed by the delivery time: a delivery sent again a week on
    and owed again carries its new send's, not the first's (long gone from the feed), and marking the
    deliveries it listed as expired spares one recorded again since it listed them."""
    delivered = DeliveredObjects(db)
    first = replace(_item(1), ingested_at_ms=1_000, delivered_at_ms=1_100)
    delivered.record([first])
    delivered.mark([replace(_stored(1, at_ms=1_500), ingested_at_ms=1_000)])
    week_on = replace(first, ingested_at_ms=WEEK_MS, delivered_at_ms=WEEK_MS + 100)
    delivered.record([week_on])
    (listed,) = delivered.unstored()
    assert listed.delivered_at_ms == WEEK_MS + 100
    delivered.record([replace(week_on, ingested_at_ms=WEEK_MS + 5_000, delivered_at_ms=WEEK_MS + 5_100)])
    delivered.mark_expired([listed], WEEK_MS + 200)
    assert [i.delivered_at_ms for i in delivered.unstored()] == [WEEK_MS + 5_100], "not marked expired"
    delivered.mark_expired(list(delivered.unstored()), WEEK_MS + 6_000)
    assert list(delivered.unstored()) == []

"""An instance's original and its correction on different priority lanes: the gateway stores whichever
is newer (by ingest) and does not put the older content back over it when that comes last."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from kafka.structs import TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.gateway.fetched import Fetched
from services.gateway.records import DeadLetters, InstanceVersion, SendAction, StoredRecords, send_action
from services.gateway.targets import StoreResult
from services.gateway.worker import Gateway, GatewayOptions
from services.proto_gen.imx.v1 import events_pb2

from .fake_consumer import FEED, FakeFeed, Record


def _send(delivery_id: str, ingested_at_ms: int, sha: str) -> events_pb2.PartnerDelivery:
    delivery = events_pb2.PartnerDelivery(
        meta=events_pb2.EventMeta(event_id=delivery_id, ingested_at_ms=ingested_at_ms), partner_id="p"
    )
    delivery.instance.study_instance_uid = "2.25.1"
    delivery.instance.series_instance_uid = "2.25.1.1"
    delivery.instance.sop_instance_uid = "2.25.1.1.1"
    delivery.blob.sha256, delivery.blob.size = sha * 64, 1
    return delivery


class Sends(FakeFeed):
    def __init__(self, sends: list[events_pb2.PartnerDelivery], stop: threading.Event) -> None:
        super().__init__(len(sends), stop)
        self._sends = sends

    def poll(self, timeout_ms: int, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        polled = super().poll(timeout_ms, max_records)
        return {
            tp: [
                Record(r.offset, [(EVENT_TYPE_HEADER, b"PartnerDelivery")], self._sends[r.offset].SerializeToString())
                for r in records
            ]
            for tp, records in polled.items()
        }


class _Acknowledged:
    def get(self, timeout: float | None = None) -> None:
        pass


class Receipts:
    def __init__(self) -> None:
        self.sent: list[events_pb2.DeliveryReceipt] = []

    def send(self, topic: str, value: bytes, **kwargs: Any) -> _Acknowledged:
        self.sent.append(events_pb2.DeliveryReceipt.FromString(value))
        return _Acknowledged()

    def flush(self, timeout: float | None = None) -> None:
        pass


class Pacs:
    kind = "dicom"

    def __init__(self) -> None:
        self.stored: list[str] = []

    def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
        self.stored.append(delivery.blob.sha256[0])
        return StoreResult.stored("0x0000")


class InMemory:
    def fetch(self, delivery: events_pb2.PartnerDelivery) -> Fetched:
        return Fetched(data=b"x")


def _run(
    tmp_path: Path,
    sends: list[events_pb2.PartnerDelivery],
    records: StoredRecords | None = None,
    receipts: Receipts | None = None,
) -> tuple[list[str], list[tuple[str, str]], Any]:
    stop = threading.Event()
    receipts, pacs = receipts or Receipts(), Pacs()
    options = GatewayOptions(receipts_topic="r", commit_interval_s=0.0, fetch_ahead=0)
    gateway = Gateway(
        Sends(sends, stop),  # type: ignore[arg-type]
        receipts,  # type: ignore[arg-type]
        InMemory(),  # type: ignore[arg-type]
        pacs,  # type: ignore[arg-type]
        records or StoredRecords(tmp_path / "stored.sqlite3"),
        DeadLetters(tmp_path / "dead-letters"),
        options,
    )
    gateway.subscribe(FEED)
    counters = gateway.run(stop)
    return pacs.stored, [(r.delivery_id, r.detail) for r in receipts.sent], counters


def test_an_older_send_that_comes_after_its_correction_is_not_stored_over_it(tmp_path: Path) -> None:
    stored, receipts, counters = _run(tmp_path, [_send("fix", 2_000, "c"), _send("orig", 1_000, "a")])
    assert stored == ["c"], "the PACS keeps the correction"
    assert receipts == [("fix", "0x0000"), ("orig", "superseded")]
    assert counters.superseded == 1 and "superseded 1" in counters.line()


def test_sends_in_their_order_are_each_stored(tmp_path: Path) -> None:
    stored, _, counters = _run(tmp_path, [_send("orig", 1_000, "a"), _send("fix", 2_000, "c")])
    assert stored == ["a", "c"] and counters.superseded == 0


def test_a_delivery_without_an_ingest_time_is_older_than_any_with_one(tmp_path: Path) -> None:
    """As delivery orders them: among those without, the greater delivery id is the newer."""
    stored, _, counters = _run(tmp_path, [_send("fix", 5, "c"), _send("orig", 0, "a"), _send("fix", 5, "c")])
    assert stored == ["c"] and counters.superseded == 1
    stored, _, _ = _run(tmp_path / "b", [_send("fix", 0, "c"), _send("orig", 0, "a")])
    assert stored == ["c", "a"]


def test_a_later_send_is_stored_again_though_another_gateway_stored_the_correction_meanwhile(tmp_path: Path) -> None:
    """Replicas keep a state folder each and partitions move between them: this gateway stored the
    original, another the correction, and the original sent again newer still comes back here. Its
    record says the target holds the original; it holds the correction, and delivery takes the original
    for the newest. Taken for a repeat, its receipt had delivery mark it stored while the target held the
    correction."""
    here, there = StoredRecords(tmp_path / "here.sqlite3"), StoredRecords(tmp_path / "there.sqlite3")
    pacs_order = []
    for records, send in [(here, _send("orig", 1_000, "a")), (there, _send("fix", 2_000, "c"))]:
        pacs_order += _run(tmp_path, [send], records)[0]
    stored, receipts, counters = _run(tmp_path, [_send("orig", 3_000, "a")], here)
    assert pacs_order + stored == ["a", "c", "a"], "the newest send is what the target holds last"
    assert receipts == [("orig", "0x0000")] and counters.duplicates == 0


def test_an_older_send_of_a_delivery_with_other_content_is_not_stored_over_the_newer(tmp_path: Path) -> None:
    """One delivery id, two objects: the same source de-identified again under a changed profile. The
    newer, stored first (another lane), stays; the older is superseded."""
    stored, receipts, counters = _run(tmp_path, [_send("orig", 3_000, "b"), _send("orig", 1_000, "a")])
    assert stored == ["b"] and receipts == [("orig", "0x0000"), ("orig", "superseded")]
    assert counters.superseded == 1


def test_a_send_published_again_newer_than_the_correction_is_stored_over_it(tmp_path: Path) -> None:
    """Ingest publishes an event again under its id, with the new send's time, when its mark was lost:
    the original sent again after its correction is the newest, as delivery has it, and is stored, once
    as a repeat of what the target held and once after the correction had been stored over it."""
    stored, receipts, _ = _run(
        tmp_path, [_send("fix", 2_000, "c"), _send("orig", 1_000, "a"), _send("orig", 3_000, "a")]
    )
    assert stored == ["c", "a"]
    assert receipts == [("fix", "0x0000"), ("orig", "superseded"), ("orig", "0x0000")]
    again, _, _ = _run(tmp_path / "b", [_send("orig", 1_000, "a"), _send("fix", 2_000, "c"), _send("orig", 3_000, "a")])
    assert again == ["a", "c", "a"], "the target held the correction: the original goes over it again"


def test_a_repeat_of_the_newest_send_with_a_later_time_is_stored_again_and_newer_still(tmp_path: Path) -> None:
    stored, receipts, _ = _run(
        tmp_path, [_send("orig", 1_000, "a"), _send("orig", 3_000, "a"), _send("fix", 2_000, "c")]
    )
    assert stored == ["a", "a"] and receipts == [("orig", "0x0000"), ("orig", "0x0000"), ("fix", "superseded")]
    stored, receipts, _ = _run(tmp_path / "b", [_send("orig", 3_000, "a"), _send("orig", 1_000, "a")])
    assert stored == ["a"] and receipts == [("orig", "0x0000"), ("orig", "duplicate")], "an earlier one: a repeat"


def test_a_superseded_receipt_has_an_id_of_its_own_and_marks_nothing_at_delivery() -> None:
    from services.delivery.handler import stored_receipt
    from services.gateway.receipts import STORED, instance_receipt, superseded_receipt

    send = _send("orig", 1_000, "a")
    superseded = superseded_receipt(send, "dicom", 5)
    assert superseded.meta.event_id != instance_receipt(send, STORED, "dicom", 1, 5).meta.event_id
    assert stored_receipt(superseded, "p") is None
    assert stored_receipt(instance_receipt(send, STORED, "dicom", 1, 5), "p") is not None


@pytest.mark.parametrize(
    ("newest", "stored_before", "action"),
    [
        (None, False, SendAction.STORE),
        (None, True, SendAction.DUPLICATE),
        (("orig", 1_000), True, SendAction.DUPLICATE),
        (("orig", 1_000), False, SendAction.STORE),
        (("orig", 500), True, SendAction.STORE),  # a later send of the delivery recorded: stored again
        (("orig", 3_000), True, SendAction.DUPLICATE),  # an earlier send of the object the target holds
        (("orig", 3_000), False, SendAction.SUPERSEDED),  # an earlier send, other content: the newer stays
        (("fix", 2_000), False, SendAction.SUPERSEDED),
        (("fix", 2_000), True, SendAction.SUPERSEDED),
        (("fix", 500), False, SendAction.STORE),
        (("fix", 500), True, SendAction.STORE),  # stored before, then stored over: the target holds "fix"
        (("zzz", 1_000), False, SendAction.SUPERSEDED),  # the same ingest time: the greater delivery id
    ],
)
def test_what_a_gateway_does_with_a_send(
    newest: tuple[str, int] | None, stored_before: bool, action: SendAction
) -> None:
    version = InstanceVersion("i", 1_000, "orig")
    recorded = InstanceVersion("i", newest[1], newest[0]) if newest else None
    assert send_action(version, recorded, stored_before) is action


@pytest.mark.parametrize(("stored_at_ms", "action"), [(3_000, SendAction.STORE), (7_000, SendAction.DUPLICATE)])
def test_on_an_earlier_releases_record_a_send_ingested_after_the_store_is_a_later_one(
    stored_at_ms: int, action: SendAction
) -> None:
    """An earlier release kept no sends: only the store's time tells a later send from a repeat."""
    assert send_action(InstanceVersion("i", 5_000, "orig"), None, True, stored_at_ms) is action


def test_a_send_superseded_by_a_later_send_of_its_own_delivery_says_so(tmp_path: Path) -> None:
    """Then the dead letter under its delivery id may be the later send's, and is kept."""
    records = StoredRecords(tmp_path / "stored.sqlite3")
    later = _send("orig", 3_000, "b")
    records.add("orig", later.blob.sha256, "2.25.1", 4_000, InstanceVersion.of(later))
    same = records.judge(_send("orig", 1_000, "a"))
    assert same.action is SendAction.SUPERSEDED and same.by_same_delivery
    other = records.judge(_send("earlier", 1_000, "a"))
    assert other.action is SendAction.SUPERSEDED and not other.by_same_delivery


def test_a_store_over_the_correction_is_reported_under_an_id_of_its_own(tmp_path: Path) -> None:
    """The original, its correction, then the original published again newer still and stored over the
    correction: that store's receipt is a new one (audit keeps it; delivery tells it from the first by
    the send's ingest time); read again after a crash it is the same receipt. A plain repeat of what the
    target holds is the first store's receipt again."""
    receipts = Receipts()
    sends = [_send("orig", 1_000, "a"), _send("fix", 2_000, "c"), _send("orig", 3_000, "a")]
    _run(tmp_path, sends, receipts=receipts)
    first, _, again = receipts.sent
    assert again.delivery_id == first.delivery_id == "orig" and again.meta.event_id != first.meta.event_id
    assert (first.meta.ingested_at_ms, again.meta.ingested_at_ms) == (1_000, 3_000)

    replayed = Receipts()
    stored, _, counters = _run(tmp_path, [_send("orig", 3_000, "a")], receipts=replayed)
    assert stored == [] and counters.duplicates == 1
    assert replayed.sent[0].meta.event_id == again.meta.event_id

    repeats = Receipts()
    _run(tmp_path / "b", [_send("orig", 1_000, "a"), _send("orig", 1_000, "a")], receipts=repeats)
    assert repeats.sent[0].meta.event_id == repeats.sent[1].meta.event_id == first.meta.event_id


def test_a_state_folder_of_an_earlier_release_reports_its_stores_under_their_first_ids(tmp_path: Path) -> None:
    from services.gateway.receipts import STORED, instance_receipt, stored_receipt_id

    path = tmp_path / "stored.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE stored (delivery_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, study TEXT NOT NULL,"
        " stored_at_ms INTEGER NOT NULL)"
    )
    old.execute("INSERT INTO stored VALUES ('orig', ?, '2.25.1', 7000)", ("a" * 64,))  # after its ingest
    old.commit()
    old.close()
    send = _send("orig", 1_000, "a")
    records = StoredRecords(path)
    judged = records.judge(send)
    assert judged.action is SendAction.DUPLICATE and judged.stored_at_ms == 7_000
    assert stored_receipt_id(send, judged) == instance_receipt(send, STORED, "dicom", 1, 7_000).meta.event_id
    records.add("other", "b" * 64, "2.25.1", 8, receipt_id="r-other")
    records.close()
    assert StoredRecords(path)._row("other") == ("b" * 64, 8, "r-other"), "kept when opened again"

    # Rolled back, an earlier release writes `stored` by position, as it always did.
    rolled_back = sqlite3.connect(path)
    rolled_back.execute("INSERT OR REPLACE INTO stored VALUES ('third', ?, '2.25.1', 9)", ("c" * 64,))
    rolled_back.commit()
    rolled_back.close()
    assert StoredRecords(path).stored("third") == ("c" * 64, 9)

"""Group commit on a real broker: eight C-STORE associations at once share broker flushes and receipt
writes (counted, not timed), every instance is on Kafka once and every receipt is marked published.
Then what the groups write on the blob volume (one link per published instance, all to one record),
and a crash between the broker's acknowledgement and the mark."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer, ensure_topics
from services.common.messages import OutgoingMessage
from services.common.stores.organisations import CallingOrg
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance, Accepted, Duplicate
from services.ingest.file_receipts import FileReceiptStore
from services.ingest.scp import DicomReceiver
from services.ingest.settings import IngestSettings
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import mr_study
from tests.waiting import wait_for

CALLING_AE = "MODALITY1"
ASSOCIATIONS = 8


class GatedProducer:
    """The real producer, counting flushes; the first one is held until the test lets it go."""

    def __init__(self, producer: BusProducer) -> None:
        self._producer = producer
        self.flushes: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None:
        self.entered.set()
        assert self.gate.wait(60)
        self._producer.publish(messages, timeout_s)
        self.flushes.append(len(messages))


@pytest.fixture
def topics(kafka_bootstrap: str, make_name: Callable[[str], str]) -> Topics:
    topics = Topics(make_name("gc") + "-")
    ensure_topics(kafka_bootstrap, [topics.ingested, topics.quarantine], 1)
    return topics


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[GatedProducer]:
    real = BusProducer(kafka_bootstrap, client_id="imx-test-group-commit")
    try:
        yield GatedProducer(real)
    finally:
        real.close()


def _send(port: int, data: bytes) -> int:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMX")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dcmread(BytesIO(data))).Status)
    finally:
        assoc.release()


def receipt_links(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_symlink())


def marks(root: Path) -> list[Path]:
    """Published events' links (beside them, `procs/`: the records they link to)."""
    return [p for p in receipt_links(root) if "procs" not in p.relative_to(root).parts]


def test_eight_associations_at_once_share_one_flush_and_one_receipt_write(
    tmp_path: Path, topics: Topics, producer: GatedProducer, kafka_bootstrap: str
) -> None:
    receipts = tmp_path / "receipts"
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        receipts=FileReceiptStore(receipts),
        bus=producer,
        topics=topics,
        max_instance_bytes=10_000_000,
    )
    receiver = DicomReceiver(
        acceptance,
        lambda: {CALLING_AE: CallingOrg("trust-a")},
        IngestSettings(dicom_port=0, calling_ae_refresh_s=60, blob_dir=tmp_path / "blobs"),
    )
    receiver.start()
    instances = mr_study(501, ASSOCIATIONS)
    statuses: list[int] = [-1] * ASSOCIATIONS
    try:

        def send(n: int) -> None:
            statuses[n] = _send(receiver.port, instances[n])

        senders = [threading.Thread(target=send, args=(n,)) for n in range(ASSOCIATIONS)]
        senders[0].start()
        assert producer.entered.wait(30)
        for sender in senders[1:]:
            sender.start()
        wait_for(lambda: acceptance.commits.queued == ASSOCIATIONS - 1, 30, "seven instances queued behind the first")
        assert not any(s == 0 for s in statuses)  # nobody heard success before the broker acknowledged
        producer.gate.set()
        for sender in senders:
            sender.join(60)
    finally:
        receiver.stop(grace_s=1)

    assert statuses == [0] * ASSOCIATIONS
    assert producer.flushes == [1, ASSOCIATIONS - 1]  # eight instances, two flushes
    assert acceptance.commits.groups == 2
    consumer = KafkaConsumer(
        topics.ingested, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    try:
        events = [events_pb2.InstanceIngested.FromString(r.value) for r in consumer]
    finally:
        consumer.close()
    assert len(events) == ASSOCIATIONS
    acceptance.commits.flush()  # the second group's marks wait for a next group, or for the end
    assert len(marks(receipts)) == ASSOCIATIONS
    store = FileReceiptStore(receipts)  # as another replica, or after a restart
    resent = store.claim_many([e.meta.event_id for e in events])
    assert all(r.published for r in resent)


def _acceptance(tmp_path: Path, bus: object, topics: Topics) -> Acceptance:
    return Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        receipts=FileReceiptStore(tmp_path / "receipts"),
        bus=bus,  # type: ignore[arg-type]
        topics=topics,
        max_instance_bytes=10_000_000,
    )


def _ingested(topics: Topics, kafka_bootstrap: str) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        topics.ingested, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    try:
        return [(r.key, r.value) for r in consumer]
    finally:
        consumer.close()


def test_a_group_writes_a_link_per_receipt_and_one_mark_on_the_blob_volume(
    tmp_path: Path, topics: Topics, producer: GatedProducer, kafka_bootstrap: str
) -> None:
    producer.gate.set()
    acceptance = _acceptance(tmp_path, producer, topics)
    instances = mr_study(502, 5)

    for data in instances:  # one sender: each instance is a group of its own
        assert isinstance(acceptance.accept(data, "trust-a", "c-store"), Accepted)

    receipts = tmp_path / "receipts"
    # A link per published instance, written with the next group's claim: the last one's waits.
    assert len(marks(receipts)) == 4
    acceptance.commits.flush()
    assert len(marks(receipts)) == 5
    assert len({p.lstat().st_ino for p in receipt_links(receipts)}) == 1  # all links to one record
    assert len(_ingested(topics, kafka_bootstrap)) == 5
    # Every instance is known as published: a resend is a duplicate and writes nothing.
    assert isinstance(acceptance.accept(instances[0], "trust-a", "c-store"), Duplicate)
    assert len(marks(receipts)) == 5


def test_a_crash_between_the_acknowledgement_and_the_mark_publishes_the_same_event_again_once(
    tmp_path: Path, topics: Topics, producer: GatedProducer, kafka_bootstrap: str
) -> None:
    producer.gate.set()
    [data] = mr_study(503, 1)
    first = _acceptance(tmp_path, producer, topics).accept(data, "trust-a", "c-store")
    # The process dies here: acknowledged by the broker, the sender told, the mark never written.
    assert isinstance(first, Accepted)
    assert not marks(tmp_path / "receipts")

    restarted = _acceptance(tmp_path, producer, topics)
    again = restarted.accept(data, "trust-a", "c-store")  # the sender resends (or another copy arrives)
    third = restarted.accept(data, "trust-a", "c-store")

    assert isinstance(again, Accepted) and again.event_id == first.event_id
    assert isinstance(third, Duplicate)
    # Twice on the broker under the same id (the second with the resend's timestamps): downstream keeps
    # one by its id.
    [one, two] = _ingested(topics, kafka_bootstrap)
    ids = {events_pb2.InstanceIngested.FromString(value).meta.event_id for _, value in (one, two)}
    assert ids == {first.event_id} and one[0] == two[0]

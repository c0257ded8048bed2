"""The acceptance core with in-memory collaborators: what is published, stored and returned."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore, sha256_hex
from services.common.dicom.header import inspect_instance
from services.common.events import EVENT_TYPE_HEADER
from services.common.messages import TransientError
from services.common.publish_refusals import RecordRefused
from services.common.stats import StageStats
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance, Accepted, Duplicate, Expected, Rejected, check_destination
from services.ingest.errors import IngestPaused, IngestUnavailable, InvalidDestination
from services.ingest.receipts import MemoryReceiptStore
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import NOT_DICOM, RecordingBus, mr_study

TOPICS = Topics("t-")


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def receipts() -> MemoryReceiptStore:
    return MemoryReceiptStore()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def make(
    bus: RecordingBus, receipts: MemoryReceiptStore, blobs: LocalBlobStore, stats: StageStats | None = None
) -> Acceptance:
    return Acceptance(
        blobs=blobs,
        receipts=receipts,
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=10_000_000,
        clock=lambda: 1_700_000_000_000,
        stats=stats,
    )


def test_accepted_instance_is_stored_and_announced_with_its_identity(bus, receipts, blobs) -> None:
    data = mr_study(1)[0]
    header = inspect_instance(data, 10_000_000)

    acceptance = make(bus, receipts, blobs)
    result = acceptance.accept(data, "trust-a", "stow-rs", "research-1")

    assert isinstance(result, Accepted)
    assert blobs.get(result.sha256) == data
    [message] = bus.on(TOPICS.ingested)
    assert message.key == header.study_instance_uid.encode()
    assert message.headers[EVENT_TYPE_HEADER] == b"InstanceIngested"
    event = events_pb2.InstanceIngested.FromString(message.value)
    assert event.meta.event_id == result.event_id
    assert event.meta.ingested_at_ms == event.meta.occurred_at_ms == 1_700_000_000_000
    assert event.instance.sop_instance_uid == header.sop_instance_uid
    assert event.instance.study_instance_uid == header.study_instance_uid
    assert event.instance.modality == "MR"
    assert event.blob.sha256 == sha256_hex(data) and event.blob.size == len(data)
    assert (event.source_org, event.channel, event.requested_destination) == ("trust-a", "stow-rs", "research-1")
    assert event.routing_attributes["modality"] == "MR"
    assert result.event_id not in receipts.published, "the mark waits for a next group, or for the end"
    acceptance.commits.flush()
    assert result.event_id in receipts.published


def test_the_same_instance_again_is_a_duplicate_and_publishes_nothing(bus, receipts, blobs) -> None:
    acceptance = make(bus, receipts, blobs)
    data = mr_study(1)[0]
    first = acceptance.accept(data, "trust-a", "c-store")
    second = acceptance.accept(data, "trust-a", "cli")

    assert isinstance(first, Accepted) and isinstance(second, Duplicate)
    assert second.event_id == first.event_id
    assert len(bus.on(TOPICS.ingested)) == 1


def test_the_same_instance_sent_again_to_another_destination_is_routed_there(bus, receipts, blobs) -> None:
    """`imx send study/ --to research-1`, then `--to research-2`: the second was answered "duplicate"
    and never went to research-2. The same destination again is still a duplicate."""
    acceptance = make(bus, receipts, blobs)
    data = mr_study(1)[0]
    first = acceptance.accept(data, "trust-a", "cli", "research-1")
    again = acceptance.accept(data, "trust-a", "cli", "research-1")
    elsewhere = acceptance.accept(data, "trust-a", "cli", "research-2")
    assert isinstance(first, Accepted) and isinstance(again, Duplicate) and isinstance(elsewhere, Accepted)
    published = [events_pb2.InstanceIngested.FromString(m.value) for m in bus.on(TOPICS.ingested)]
    assert [e.requested_destination for e in published] == ["research-1", "research-2"]
    assert isinstance(acceptance.accept(data, "trust-a", "cli"), Accepted)  # no destination: routed by rules


def test_the_same_instance_from_another_organisation_is_a_new_event(bus, receipts, blobs) -> None:
    acceptance = make(bus, receipts, blobs)
    data = mr_study(1)[0]
    a, b = acceptance.accept(data, "trust-a", "c-store"), acceptance.accept(data, "trust-b", "c-store")
    assert isinstance(a, Accepted) and isinstance(b, Accepted) and a.event_id != b.event_id


@pytest.mark.parametrize(
    "failure",
    [TransientError("publish failed: KafkaTimeoutError"), RecordRefused("publish refused: MessageSizeTooLargeError")],
)
def test_a_failed_publish_is_retried_as_a_first_attempt_under_the_same_event_id(
    bus, receipts, blobs, failure: Exception
) -> None:
    """A refusal too: a topic set to take less than its events, which the operator mends."""
    acceptance = make(bus, receipts, blobs)
    data = mr_study(1)[0]
    bus.fail, bus.failure = 1, failure
    with pytest.raises(IngestUnavailable):
        acceptance.accept(data, "trust-a", "c-store")
    assert not receipts.published, "nothing is marked for a publish that failed"

    retrying = Acceptance(
        blobs=blobs,
        receipts=receipts,
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=10_000_000,
        clock=lambda: 1_800_000_000_000,
    )
    retried = retrying.accept(data, "trust-a", "c-store")

    assert isinstance(retried, Accepted)
    [message] = bus.on(TOPICS.ingested)
    event = events_pb2.InstanceIngested.FromString(message.value)
    assert event.meta.event_id == retried.event_id and event.meta.ingested_at_ms == 1_800_000_000_000
    retrying.commits.flush()
    assert retried.event_id in receipts.published


def test_non_dicom_input_is_stored_and_quarantined_with_its_reason(bus, receipts, blobs) -> None:
    result = make(bus, receipts, blobs).accept(NOT_DICOM, "trust-a", "cli")

    assert result == Rejected("not-dicom", "", quarantined=True)
    assert not bus.on(TOPICS.ingested) and not receipts.published
    [message] = bus.on(TOPICS.quarantine)
    event = events_pb2.Quarantined.FromString(message.value)
    assert (event.stage, event.reason, event.source_org) == ("ingest", "not-dicom", "trust-a")
    assert blobs.get(event.blob.sha256) == NOT_DICOM
    assert event.meta.event_id


def test_an_instance_over_the_limit_is_quarantined_but_not_stored(bus, receipts, blobs) -> None:
    data = mr_study(1)[0]
    acceptance = Acceptance(blobs=blobs, receipts=receipts, bus=bus, topics=TOPICS, max_instance_bytes=1024)

    result = acceptance.accept(data, "trust-a", "c-store")

    assert isinstance(result, Rejected) and result.reason == "too-large" and result.quarantined
    event = events_pb2.Quarantined.FromString(bus.on(TOPICS.quarantine)[0].value)
    assert event.reason == "too-large" and event.detail == "1024"
    assert not event.HasField("blob")
    assert not blobs.exists(sha256_hex(data))


def test_unread_oversized_input_is_announced(bus, receipts, blobs) -> None:
    result = make(bus, receipts, blobs).reject_unread("trust-a", "stow-rs", 50_000_000)
    assert result.reason == "too-large" and result.quarantined
    assert events_pb2.Quarantined.FromString(bus.on(TOPICS.quarantine)[0].value).reason == "too-large"


def test_an_instance_of_another_study_than_asked_is_refused_stored_nowhere_and_announced(bus, receipts, blobs) -> None:
    """Refused with nothing announced, audit could not show it: every input ends in a state audit shows."""
    data = mr_study(1)[0]
    result = make(bus, receipts, blobs).accept(data, "trust-a", "stow-rs", expected=Expected(study_uid="1.2.3"))

    assert isinstance(result, Rejected) and result.reason == "study-mismatch" and result.quarantined
    assert result.sop_instance_uid == inspect_instance(data, 10_000_000).sop_instance_uid
    assert [m.topic for m in bus.messages] == [TOPICS.quarantine] and not receipts.published
    event = events_pb2.Quarantined.FromString(bus.messages[0].value)
    assert (event.reason, event.detail, event.blob.sha256) == ("study-mismatch", "StudyInstanceUID", "")
    assert not [p for p in blobs.root.rglob("*") if p.is_file() and p.name != ".layout"], "nothing stored"


def test_paused_intake_refuses_as_transient(bus, receipts, blobs) -> None:
    stats = StageStats("ingest")
    stats.set_paused(True)
    with pytest.raises(IngestPaused):
        make(bus, receipts, blobs, stats=stats).accept(mr_study(1)[0], "trust-a", "c-store")
    assert not bus.messages


def test_stats_count_accepted_and_rejected(bus, receipts, blobs) -> None:
    stats = StageStats("ingest")
    acceptance = make(bus, receipts, blobs, stats=stats)
    acceptance.accept(mr_study(1)[0], "trust-a", "c-store")
    acceptance.accept(NOT_DICOM, "trust-a", "c-store")
    snapshot = stats.snapshot()
    assert (snapshot.processed, snapshot.failed) == (1, 1)


@pytest.mark.parametrize("value", ["", None])
def test_no_destination_is_empty(value: str | None) -> None:
    assert check_destination(value) == ""


def test_a_destination_must_be_a_partner_id() -> None:
    assert check_destination("research-1") == "research-1"
    with pytest.raises(InvalidDestination):
        check_destination("Not A Partner!")


def test_a_kafka_error_from_send_itself_is_transient(receipts, blobs) -> None:
    from kafka.errors import KafkaTimeoutError

    class NoMetadataBus(RecordingBus):
        def publish(self, messages, timeout_s=60.0):
            raise KafkaTimeoutError("Failed to update metadata after 60.0 secs.")

    with pytest.raises(IngestUnavailable):
        make(NoMetadataBus(), receipts, blobs).accept(mr_study(1)[0], "trust-a", "c-store")


def test_a_file_hashed_by_its_writer_is_stored_under_that_hash_without_being_read_again(
    bus, receipts, blobs, tmp_path, monkeypatch
) -> None:
    data = bytes(128) + mr_study(1)[0][128:]
    received = tmp_path / "blobs" / ".tmp-c-store-1"
    received.write_bytes(data)

    def unread(file: object) -> str:
        raise AssertionError("the file was read again to hash it")

    monkeypatch.setattr("services.common.blob_store.file_sha256", unread)
    result = make(bus, receipts, blobs).accept_file(
        received, "trust-a", "c-store", preamble_written_zero=True, sha256=sha256_hex(data)
    )

    assert isinstance(result, Accepted) and result.sha256 == sha256_hex(data)
    assert blobs.get(result.sha256) == data and not received.exists()


def test_a_writers_hash_does_not_outlive_a_rewritten_preamble(bus, receipts, blobs, tmp_path) -> None:
    data = mr_study(1)[0]
    received = tmp_path / "blobs" / ".tmp-upload"
    received.write_bytes(b"\x01" * 128 + data[128:])

    result = make(bus, receipts, blobs).accept_file(received, "trust-a", "cli", sha256=sha256_hex(b"before"))

    assert isinstance(result, Accepted) and result.sha256 == sha256_hex(bytes(128) + data[128:])

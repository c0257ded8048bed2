"""The one Quarantined builder gives, stage by stage, exactly the events each stage built by hand
before it (same id, same fields, same bytes): consumers de-duplicate on the id, so a replay after
the change must not look like a new event.

The ids and SHA-256 digests of the serialized events below were produced by the hand-built code
(services/ingest/ingest_events.py `quarantined`, and the Quarantined(...) literals in the routing,
deid and delivery handlers) at commit 2f2f536, for these same inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore, sha256_hex
from services.common.messages import OutgoingMessage
from services.common.quarantine_events import Unaccepted, quarantined
from services.common.topics import Topics
from services.deid.engine import PhiLeak, Profile
from services.deid.handler import Refusal, prepare_event, refusal_for, undecodable
from services.deid.profile_documents import profile_from_document
from services.delivery.handler import deliver_event
from services.ingest.acceptance import Acceptance
from services.ingest.receipts import MemoryReceiptStore
from services.proto_gen.imx.v1 import events_pb2 as pb
from services.routing.handler import route_event
from tests.unit.event_refs import blob_ref, instance_ref
from tests.unit.ingest.samples import NOT_DICOM, RecordingBus

TOPICS = Topics(prefix="t-")
NOW = 1_700_000_000_000
LATER = 1_700_000_000_500
INSTANCE = instance_ref()
REMAPPED = instance_ref("2.25.7", "2.25.8", "2.25.9")
RESEARCH = profile_from_document({"name": "research"}, version=3)
BLOB = blob_ref("ab", 4096)
PREPARED_BLOB = blob_ref("cd", 4000)


def later() -> int:
    return LATER


def parent_meta(fill: str) -> pb.EventMeta:
    return pb.EventMeta(event_id=fill * 32, causation_id="9" * 32, occurred_at_ms=NOW + 100, ingested_at_ms=NOW)


def derived(event_id: str, parent: str) -> pb.EventMeta:
    """Meta of a later stage's quarantine: its parent as cause, the stage's clock, ingest time carried."""
    return pb.EventMeta(event_id=event_id, causation_id=parent * 32, occurred_at_ms=LATER, ingested_at_ms=NOW)


def digest(event: pb.Quarantined) -> str:
    return hashlib.sha256(event.SerializeToString(deterministic=True)).hexdigest()


def only_quarantine(messages: list[OutgoingMessage], topics: Topics = TOPICS) -> pb.Quarantined:
    [message] = [m for m in messages if m.topic == topics.quarantine]
    return pb.Quarantined.FromString(message.value)


# ingest


@pytest.mark.parametrize(
    ("unaccepted", "reason", "detail", "event_id", "sha"),
    [
        (
            Unaccepted("org-a", "stow-rs", "ab" * 32, 4096, stored=True, received_at_ms=NOW),
            "truncated",
            "PixelData",
            "1fee5d8aef8bc9852c50257b957e8de4",
            "d93def4ebd39c25e0f2bbb5a46c7caf343147be2889c76770749431620a8426d",
        ),
        (
            Unaccepted("org-a", "c-store", "", 2048, stored=False, received_at_ms=NOW),
            "too-large",
            "1024",
            "f4a57feb1acaf8ec24e548db7de711dc",
            "2900fff96c1e4eafb8260412d0da82a1d222328f1796703a2c903113590ef633",
        ),
        (
            Unaccepted("org-a", "cli", "ef" * 32, 2048, stored=False, received_at_ms=NOW),
            "too-large",
            "1024",
            "f26532796d56a71a6ae7a1e564a18f78",
            "c6271a328d78d1f5d9b1787325bdc2081cb073c4b190094187cad82d0d058dfb",
        ),
    ],
    ids=["stored", "unread", "hashed-not-stored"],
)
def test_ingest_quarantine_keeps_its_id_and_fields(
    unaccepted: Unaccepted, reason: str, detail: str, event_id: str, sha: str
) -> None:
    event = quarantined("ingest", reason, detail, unaccepted)

    assert event.meta.event_id == event_id
    assert event == pb.Quarantined(
        meta=pb.EventMeta(event_id=event_id, occurred_at_ms=NOW, ingested_at_ms=NOW),
        stage="ingest",
        reason=reason,
        detail=detail,
        source_org="org-a",
        blob=pb.BlobRef(sha256=unaccepted.sha256, size=unaccepted.size) if unaccepted.stored else None,
    )
    assert event.HasField("blob") is unaccepted.stored and not event.HasField("instance")
    assert digest(event) == sha


def test_unread_inputs_are_told_apart_by_size_and_time_and_stored_changes_no_id() -> None:
    def unread(size: int, at: int) -> str:
        return quarantined("ingest", "too-large", "1", Unaccepted("o", "cli", "", size, False, at)).meta.event_id

    assert len({unread(10, NOW), unread(11, NOW), unread(10, NOW + 1)}) == 3
    stored, kept = (Unaccepted("o", "cli", "ab" * 32, 9, flag, NOW) for flag in (True, False))
    assert quarantined("ingest", "r", "", stored).meta == quarantined("ingest", "r", "", kept).meta


@pytest.mark.parametrize(
    ("max_bytes", "send", "event_id", "sha"),
    [
        (
            10_000_000,
            lambda acceptance: acceptance.accept(NOT_DICOM, "org-a", "cli"),
            "1282a342c86a856030492527aeb3bde2",
            "f29a4bd90ce9cca0a8a6c3c9068a86f7bdeedcdab012280afd67ad63730d9d66",
        ),
        (
            1024,
            lambda acceptance: acceptance.reject_unread("org-a", "stow-rs", 50_000_000),
            "fe76f29ee5cc8cb0622695a90044f7b6",
            "1107c12574deae85ba0000acae125c6fe5c6bdf5261d9193cc26dddbf0606cc0",
        ),
    ],
    ids=["not-dicom-stored", "unread"],
)
def test_ingest_stage_publishes_the_same_quarantine_event(
    tmp_path: Path, max_bytes: int, send: Callable[[Acceptance], object], event_id: str, sha: str
) -> None:
    bus = RecordingBus()
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        receipts=MemoryReceiptStore(),
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=max_bytes,
        clock=lambda: NOW,
    )

    send(acceptance)

    [message] = bus.on(TOPICS.quarantine)
    event = pb.Quarantined.FromString(message.value)
    assert message.key is None
    assert event.meta.event_id == event_id and digest(event) == sha
    if event.reason == "not-dicom":
        assert event.blob == pb.BlobRef(sha256=sha256_hex(NOT_DICOM), size=len(NOT_DICOM))


# routing


def ingested(**changes: object) -> pb.InstanceIngested:
    event = pb.InstanceIngested(
        meta=parent_meta("a"),
        instance=INSTANCE,
        blob=BLOB,
        source_org="org-a",
        channel="stow-rs",
        requested_destination="partner-x",
        routing_attributes={"modality": "CT"},
    )
    for name, value in changes.items():
        setattr(event, name, value)
    return event


@pytest.mark.parametrize(
    ("destination", "detail", "sha"),
    [
        (
            "partner-x",
            "requested destination partner-x",
            "0d8b910be4c89a81030925b1830a6b831afc28a07340835f54a8437ef19925a2",
        ),
        ("", "", "ae350bcd9cef37fda9a646d6f82e8d019a722a2365e67b5612a7a986dd6de85a"),
    ],
)
def test_routing_quarantine_keeps_its_id_and_fields(destination: str, detail: str, sha: str) -> None:
    [message] = route_event(ingested(requested_destination=destination), [], TOPICS, clock=later)

    event = pb.Quarantined.FromString(message.value)
    assert (message.topic, message.key) == (TOPICS.quarantine, b"1.2.3")
    assert event.meta.event_id == "d6c328057cd62e79ce48611b69ad84a7"
    assert event == pb.Quarantined(
        meta=derived("d6c328057cd62e79ce48611b69ad84a7", "a"),
        stage="routing",
        reason="no-route",
        detail=detail,
        source_org="org-a",
        instance=INSTANCE,
        blob=BLOB,
    )
    assert digest(event) == sha
    assert event == quarantined("routing", "no-route", detail, ingested(requested_destination=destination), later)


# deid


def routed() -> pb.InstanceRouted:
    return pb.InstanceRouted(
        meta=parent_meta("b"),
        instance=INSTANCE,
        blob=BLOB,
        source_org="org-a",
        route_id="r-1",
        partner_id="partner-x",
        profile="research",
        profile_version=3,
        priority="PRIORITY_CLASS_ROUTINE",
    )


DEID_ID = "b0b965180d7d03ccfe8f769e8268ed37"


def deid_event(reason: str, detail: str) -> pb.Quarantined:
    return pb.Quarantined(
        meta=derived(DEID_ID, "b"),
        stage="deid",
        reason=reason,
        detail=detail,
        source_org="org-a",
        instance=INSTANCE,
        blob=BLOB,
        partner_id="partner-x",
        route_id="r-1",
    )


@pytest.mark.parametrize(
    ("profiles", "reason", "detail", "sha"),
    [
        ({}, "unknown-profile", "research v3", "25406442457c9a736311e72963ce48d25c06e37d034e4774822bc0665156b3e6"),
        (
            {("research", 3): RESEARCH},
            "unknown-partner",
            "partner-x",
            "2ef22cb9e0d6bbb1ea955198da2f6d9c7cd10739c71ff227037979d0cbb83b53",
        ),
    ],
)
def test_deid_stage_quarantine_keeps_its_id_and_fields(
    tmp_path: Path, profiles: dict[tuple[str, int], Profile], reason: str, detail: str, sha: str
) -> None:
    [message] = prepare_event(
        routed(),
        lambda name, version: profiles.get((name, version)),
        lambda partner: None,
        LocalBlobStore(tmp_path),
        TOPICS,
        clock=later,
    )

    event = pb.Quarantined.FromString(message.value)
    assert (message.topic, message.key) == (TOPICS.quarantine, b"1.2.3")
    assert event.meta.event_id == DEID_ID
    assert event == deid_event(reason, detail)
    assert digest(event) == sha


def undecodable_value() -> Refusal:
    problem = undecodable(ValueError("a value from the header"))
    assert problem is not None
    return refusal_for(problem)


@pytest.mark.parametrize(
    ("refusal", "reason", "detail", "sha"),
    [
        (
            refusal_for(PhiLeak(0x00100010, 0x00100010)),
            "phi-leak",
            "(0010,0010)",
            "624fade0893e9d976ce0faa451fc1c8fdf011797e40522013179272743a37fa9",
        ),
        (
            undecodable_value(),
            "undecodable-input",
            "ValueError",
            "56453afc11fcf20cda4de210f9da325ffa7691957948b67b298ef3a36cbe0f74",
        ),
    ],
    ids=["phi-leak", "undecodable-input"],
)
def test_deid_refusals_keep_their_id_and_fields(refusal: Refusal, reason: str, detail: str, sha: str) -> None:
    event = quarantined("deid", refusal.reason, refusal.detail, routed(), later)

    assert (refusal.reason, refusal.detail) == (reason, detail)
    assert event.meta.event_id == DEID_ID
    assert event == deid_event(reason, detail)
    assert digest(event) == sha


# delivery


def test_delivery_quarantine_keeps_its_id_and_fields() -> None:
    prepared = pb.InstancePrepared(
        meta=parent_meta("c"),
        source_instance=INSTANCE,
        instance=REMAPPED,
        blob=PREPARED_BLOB,
        source_blob=BLOB,
        source_org="org-a",
        route_id="r-1",
        partner_id="partner-gone",
        profile="research",
        profile_version=3,
        priority="PRIORITY_CLASS_ROUTINE",
        deidentified=True,
    )

    messages, delivery = deliver_event(prepared, False, TOPICS, "https://x/dicomweb", clock=later)

    assert delivery is None
    event = only_quarantine(messages)
    assert messages[0].key == b"1.2.3"
    assert event.meta.event_id == "85f1b612b4fb124b3c49cf55b0e4c462"
    # The instance as it was sent, and the blob that was prepared for the partner.
    assert event == pb.Quarantined(
        meta=derived("85f1b612b4fb124b3c49cf55b0e4c462", "c"),
        stage="delivery",
        reason="unknown-partner",
        source_org="org-a",
        instance=INSTANCE,
        blob=PREPARED_BLOB,
        partner_id="partner-gone",
        route_id="r-1",
    )
    assert digest(event) == "abb2d69a281fc39b054c909181f6794fb9bdf6a0300e40961199d7cf68276431"


# Parents that carry little: an empty instance or blob copied from the parent stays present (and
# serialized) as it was, so the bytes, not only the fields, stay the same.


def test_bare_parents_give_the_same_bytes_as_before(tmp_path: Path) -> None:
    topics = Topics()
    routing = only_quarantine(
        route_event(pb.InstanceIngested(meta=parent_meta("d"), source_org="org-b"), [], topics, clock=later), topics
    )
    deid = only_quarantine(
        prepare_event(
            pb.InstanceRouted(meta=parent_meta("e"), source_org="org-b", profile="p"),
            lambda name, version: None,
            lambda partner: b"k",
            LocalBlobStore(tmp_path),
            topics,
            clock=later,
        ),
        topics,
    )
    delivery = only_quarantine(
        deliver_event(pb.InstancePrepared(meta=parent_meta("f"), source_org="org-b"), False, topics, "x", later)[0],
        topics,
    )

    assert [(e.meta.event_id, digest(e)) for e in (routing, deid, delivery)] == [
        ("aef484399c3030b0263bbf0316b3acef", "6d8cbba13d5954c96073827e4758a58fb59f65bcc06062ae3ab48afc947c5cc5"),
        ("7487ec617cd2fce04a3d27cb90ca53b2", "5a1525482e818f5a366838e1f9071ec9a5b38789ea4bce69131f3c8406118f37"),
        ("ad7d42767e4f3c61825c6e2f13c5af8d", "7b63de26cef52ecdd82903b1ad723ca56b4f222c5574303edb6477b4a6a633da"),
    ]
    assert all(e.HasField("instance") and e.HasField("blob") for e in (routing, deid, delivery))


def test_a_stage_cannot_quarantine_another_stages_input() -> None:
    # deid and delivery derive their ids alike: deid given a prepared instance would take delivery's id.
    with pytest.raises(TypeError, match="deid stage quarantines InstanceRouted, not InstancePrepared"):
        quarantined("deid", "x", "", pb.InstancePrepared(meta=parent_meta("c")))  # type: ignore[call-overload]

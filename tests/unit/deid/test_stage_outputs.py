"""What the deid stage publishes, pinned: for each way an InstanceRouted can go (passed through,
quarantined before de-identification, de-identified, refused by the engine or the decoder), the
topic, key, headers and value bytes of every outgoing message. A de-identified instance's event
names its output blob by SHA-256, so the value's digest pins the bytes written too. Consumers
de-duplicate on event ids and partners on blobs: a restructuring of the stage must give exactly these.

The digests below were produced by the stage before it was split into a pure plan and an I/O shell
(services/deid/handler.py at commit fe9e28c; this test passed on it, commit 7402807), for these same
inputs and a fixed clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from services.common.blob_store import BlobStore, LocalBlobStore
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.topics import Topics
from services.deid.deflated import deflated_body
from services.deid.engine import Profile
from services.deid.handler import DeidHandler, prepare_event
from services.deid.profile_documents import profile_from_document
from services.proto_gen.imx.v1 import events_pb2

from .builders import KEY, ct_dataset, to_bytes
from .stage_builders import routed_event

TOPICS = Topics("t.")
NOW = 1_700_000_000_000
AI = profile_from_document({"name": "ai"}, version=4)


def fixed_clock() -> int:
    return NOW


def _with_unknown_vr_in_modality(data: bytes) -> bytes:
    at = data.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality, explicit VR little endian
    return data[: at + 4] + b"ZZ" + data[at + 6 :]


def _with_broken_stream(data: bytes) -> bytes:
    body = deflated_body(data)
    assert body is not None
    return data[:body] + b"\xff" * 16 + data[body + 16 :]  # block type 3 does not exist (RFC 1951 3.2.3)


@dataclass(frozen=True)
class Case:
    """An input (built into `blobs`), and what the stage is given with it."""

    routed: Callable[[BlobStore], events_pb2.InstanceRouted]
    profiles: dict[tuple[str, int], Profile]
    keys: dict[str, bytes]
    max_inflated_bytes: int = 1024**3


def _routed(data: bytes, profile: str = "ai", **fields: object) -> Callable[[BlobStore], events_pb2.InstanceRouted]:
    def build(blobs: BlobStore) -> events_pb2.InstanceRouted:
        routed = routed_event(blobs, data, profile)
        for name, value in fields.items():
            setattr(routed, name, value)
        return routed

    return build


def _stored_as(good: bytes, damage: Callable[[bytes], bytes]) -> Callable[[BlobStore], events_pb2.InstanceRouted]:
    """The event of a good instance whose blob holds a damaged copy (its UIDs still readable)."""

    def build(blobs: BlobStore) -> events_pb2.InstanceRouted:
        routed = routed_event(blobs, good, "ai")
        bad = damage(good)
        routed.blob.sha256, routed.blob.size = blobs.put(bad), len(bad)
        return routed

    return build


CT = to_bytes(ct_dataset())
DEFLATED = to_bytes(ct_dataset(), DeflatedExplicitVRLittleEndian)
PROFILES = {("ai", 0): AI}
KEYS = {"research-a": KEY}

CASES = {
    "pass-through": Case(_routed(CT, "", priority=events_pb2.PRIORITY_CLASS_URGENT), PROFILES, KEYS),
    "bare-pass-through": Case(
        lambda _blobs: events_pb2.InstanceRouted(meta=events_pb2.EventMeta(event_id="e0")), {}, {}
    ),
    "unknown-profile": Case(_routed(CT, "ai", profile_version=3), {}, KEYS),
    "unknown-profile-current": Case(_routed(CT, "ai"), {}, KEYS),
    "unknown-partner": Case(_routed(CT, "ai"), PROFILES, {}),
    "ct": Case(_routed(CT, "ai", priority=events_pb2.PRIORITY_CLASS_BULK), PROFILES, KEYS),
    "deflated": Case(_routed(DEFLATED, "ai"), PROFILES, KEYS),
    "broken-deflate-stream": Case(_stored_as(DEFLATED, _with_broken_stream), PROFILES, KEYS),
    "inflates-past-the-limit": Case(_routed(DEFLATED, "ai"), PROFILES, KEYS, max_inflated_bytes=1024),
    "undecodable": Case(_stored_as(CT, _with_unknown_vr_in_modality), PROFILES, KEYS),
}


def outputs_of(case: Case, blob_dir: Path) -> list[OutgoingMessage]:
    blobs = LocalBlobStore(blob_dir)
    return prepare_event(
        case.routed(blobs),
        lambda name, version: case.profiles.get((name, version)),
        case.keys.get,
        blobs,
        TOPICS,
        clock=fixed_clock,
        scratch=blob_dir,
        max_inflated_bytes=case.max_inflated_bytes,
    )


def handler_for(case: Case, blobs: LocalBlobStore, scratch: Path, splice: bool = False) -> DeidHandler:
    """The bus handler over `case`'s profiles and keys, with the fixed clock."""
    return DeidHandler(
        lambda name, version: case.profiles.get((name, version)),
        case.keys.get,
        blobs,
        TOPICS,
        scratch,
        case.max_inflated_bytes,
        clock=fixed_clock,
        splice=splice,
    )


def summary(messages: list[OutgoingMessage]) -> list[tuple[str, bytes | None, dict[str, bytes], str]]:
    return [(m.topic, m.key, dict(m.headers), hashlib.sha256(m.value).hexdigest()) for m in messages]


EXPECTED: dict[str, list[tuple[str, bytes | None, dict[str, bytes], str]]] = {
    "pass-through": [
        (
            "t.imx.prepared.urgent.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"InstancePrepared"},
            "3600864f601855f0bc823b346df2a2e872058604f6dff65072f05cfde5369b50",
        )
    ],
    "bare-pass-through": [
        (
            "t.imx.prepared.v1",
            None,
            {"imx-event-type": b"InstancePrepared"},
            "2d0cbbfcc6965ddcb9d4d76849948a3e960bb254886ff294e42bae26ecd0317b",
        )
    ],
    "unknown-profile": [
        (
            "t.imx.quarantine.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"Quarantined"},
            "537db58ba630bf39239c77dd3919d750aa0da56455d682246ef984d0665d6aae",
        )
    ],
    "unknown-profile-current": [
        (
            "t.imx.quarantine.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"Quarantined"},
            "07ae9cb3b14fdde61408c6319580fbce698bac1abb8a352578c466eff740f0ac",
        )
    ],
    "unknown-partner": [
        (
            "t.imx.quarantine.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"Quarantined"},
            "4f9ba71a9a4a6fadb6b3e58c59bfa0cb931071baef1e9b272654df0656484962",
        )
    ],
    "ct": [
        (
            "t.imx.prepared.bulk.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"InstancePrepared"},
            "c821c9b810029b2bb3e3122e1479471befcc9f47894a1c68b5816a5b8f5fe013",
        )
    ],
    "deflated": [
        (
            "t.imx.prepared.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"InstancePrepared"},
            "19d7cabdf44b6efb02e57190bbd3f46414e5321e5e4f1eb6b4e0e83b8c05e84e",
        )
    ],
    "broken-deflate-stream": [
        (
            "t.imx.quarantine.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"Quarantined"},
            "4eb92930ffe213b2c422b26207907812c73617868db45fa77e7dcc692deccc07",
        )
    ],
    "inflates-past-the-limit": [
        (
            "t.imx.quarantine.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"Quarantined"},
            "e3188b54b6c939067e2813f328ce7725e4e97816825614c400f288ea7d160c94",
        )
    ],
    "undecodable": [
        (
            "t.imx.quarantine.v1",
            b"1.2.826.0.1.3680043.99.1",
            {"imx-event-type": b"Quarantined"},
            "63e0486df4aa7730ea07d54dd2527b9e74e856a36a44d778859aab2f08bed420",
        )
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_stage_publishes_what_it_published_before(name: str, tmp_path: Path) -> None:
    messages = outputs_of(CASES[name], tmp_path)

    assert summary(messages) == EXPECTED[name]
    # What a de-identified instance's event names is in the store (LocalBlobStore.get checks the
    # digest), and no temporary file is left behind.
    for message in messages:
        if message.headers["imx-event-type"] == b"InstancePrepared":
            prepared = events_pb2.InstancePrepared.FromString(message.value)
            if prepared.deidentified:
                assert len(LocalBlobStore(tmp_path).get(prepared.blob.sha256)) == prepared.blob.size
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("name", list(CASES))
def test_the_bus_handler_publishes_the_same(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    blobs = LocalBlobStore(tmp_path)
    handle = handler_for(case, blobs, tmp_path)
    value = case.routed(blobs).SerializeToString()

    messages = handle(IncomingMessage(TOPICS.routed, 0, 0, None, value))
    assert summary(messages) == EXPECTED[name]
    # The output blob is under its name only once the batch is flushed (before the bus publishes).
    named = [
        prepared.blob.sha256
        for m in messages
        if m.headers["imx-event-type"] == b"InstancePrepared"
        and (prepared := events_pb2.InstancePrepared.FromString(m.value)).deidentified
    ]
    assert not any(blobs.exists(sha) for sha in named)
    handle.flush()
    assert all(blobs.get(sha) for sha in named)
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("name", ["ct", "deflated", "broken-deflate-stream", "undecodable"])
def test_a_mapped_input_gives_the_same(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Inputs from 32 MiB up are read through a map (files.py): the result's pixel data are a view into it.
    monkeypatch.setattr("services.deid.files.MAPPED_FROM_BYTES", 1)
    assert summary(outputs_of(CASES[name], tmp_path)) == EXPECTED[name]
    assert not list(tmp_path.rglob(".tmp-*"))

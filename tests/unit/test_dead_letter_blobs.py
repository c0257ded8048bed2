"""The objects a pipeline dead letter names, which the blob lifecycle keeps (services/common/dead_letter_blobs.py)."""

from __future__ import annotations

from services.common.bus import dead_letter_for
from services.common.dead_letter_blobs import blobs_named
from services.common.events import EVENT_TYPE_HEADER, event_message
from services.common.messages import IncomingMessage
from services.proto_gen.imx.v1 import events_pb2

A, B = "a" * 64, "b" * 64


def dead_letter(event: object) -> tuple[dict[str, bytes], bytes]:
    """The event as a stage's dead letter carries it: value and headers kept, the failure's added."""
    sent = event_message("imx.prepared.v1", event, "1.2.3")  # type: ignore[arg-type]
    incoming = IncomingMessage(sent.topic, 0, 7, sent.key, sent.value, dict(sent.headers))
    letter = dead_letter_for(incoming, RuntimeError("boom"), "imx.deadletter.v1", "delivery")
    return dict(letter.headers), letter.value


def test_a_de_identified_copy_names_itself_and_the_object_it_was_made_from() -> None:
    prepared = events_pb2.InstancePrepared(
        blob=events_pb2.BlobRef(sha256=A, size=10), source_blob=events_pb2.BlobRef(sha256=B, size=12)
    )
    assert blobs_named(*dead_letter(prepared)) == {A, B}


def test_every_event_with_an_object_names_it() -> None:
    for event in (
        events_pb2.InstanceIngested(blob=events_pb2.BlobRef(sha256=A)),
        events_pb2.InstanceRouted(blob=events_pb2.BlobRef(sha256=A)),
        events_pb2.PartnerDelivery(blob=events_pb2.BlobRef(sha256=A)),
    ):
        assert blobs_named(*dead_letter(event)) == {A}, type(event).__name__


def test_letters_that_name_no_object_keep_nothing() -> None:
    headers, value = dead_letter(events_pb2.InstanceIngested(blob=events_pb2.BlobRef(sha256=A)))
    assert blobs_named(headers, b"") == set()  # its value dropped for its size
    assert blobs_named({**headers, EVENT_TYPE_HEADER: b"NoSuchEvent"}, value) == set()
    assert blobs_named({**headers, EVENT_TYPE_HEADER: b"DESCRIPTOR"}, value) == set()  # a module name, not a type
    assert blobs_named({}, value) == set()  # no event type at all
    assert blobs_named(headers, b"\xff\xff\xff") == set()  # does not decode
    manifest = events_pb2.StudyComplete(instances=[events_pb2.ManifestEntry(sha256=A)])
    assert blobs_named(*dead_letter(manifest)) == set()  # a manifest lists objects delivery owes anyway
    assert blobs_named(*dead_letter(events_pb2.InstanceIngested())) == set()  # no object stored

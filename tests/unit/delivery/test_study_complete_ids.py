"""A StudyComplete's event id names its manifest: the same manifest, the same id (a sweep repeated after
a crash is the same check); a corrected instance (same count, another object), another id. With the count
alone a partner and audit, which drop repeated ids, dropped the new manifest."""

from __future__ import annotations

from services.common.topics import Topics
from services.delivery.completeness import study_complete
from services.delivery.delivered import DeliveredInstance
from services.proto_gen.imx.v1 import events_pb2

TOPICS = Topics("t-")


def _instance(sop: str, sha256: str) -> DeliveredInstance:
    return DeliveredInstance(
        "lab",
        "1.2.3",
        "1.2.3.4",
        sop,
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.1.2.1",
        sha256,
        10,
        f"d-{sop}-{sha256}",
    )


def _id(manifest: list[DeliveredInstance]) -> str:
    message = study_complete("lab", "1.2.3", manifest, TOPICS, lambda: 0)
    return events_pb2.StudyComplete.FromString(message.value).meta.event_id


def test_the_same_manifest_in_any_order_has_the_same_id_and_a_corrected_one_another() -> None:
    first = [_instance("1.2.3.4.1", "a" * 64), _instance("1.2.3.4.2", "b" * 64)]
    assert _id(first) == _id(list(reversed(first)))
    corrected = [first[0], _instance("1.2.3.4.2", "c" * 64)]
    assert _id(corrected) != _id(first)

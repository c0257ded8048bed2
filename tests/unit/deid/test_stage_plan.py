"""The deid stage's pure core, without a blob store: what `plan` decides for an event and which lookups
it asks, and the events built from a decision and from what was released."""

from __future__ import annotations

import pytest

from services.common.messages import TransientError
from services.common.topics import Topics
from services.deid.engine import DeidResult, Profile
from services.deid.handler import (
    Deidentify,
    PassThrough,
    Quarantine,
    Refusal,
    Released,
    plan,
    prepared_event,
    quarantine_event,
    released,
)
from services.deid.profile_documents import profile_from_document
from services.proto_gen.imx.v1 import events_pb2 as pb
from tests.unit.event_refs import blob_ref, instance_ref

TOPICS = Topics("t.")
NOW = 1_700_000_000_000
AI = profile_from_document({"name": "ai"}, version=4)
KEY = b"k" * 32
SOURCE = instance_ref()
SOURCE_BLOB = blob_ref("ab", 4096)
RELEASED = Released(profile_version=4, instance=instance_ref("2.25.7", "2.25.8", "2.25.9"), blob=blob_ref("cd", 4000))


def clock() -> int:
    return NOW


def routed(
    profile: str = "ai", version: int = 0, priority: pb.PriorityClass = pb.PRIORITY_CLASS_ROUTINE
) -> pb.InstanceRouted:
    return pb.InstanceRouted(
        meta=pb.EventMeta(event_id="e1", occurred_at_ms=1, ingested_at_ms=1),
        instance=SOURCE,
        blob=SOURCE_BLOB,
        source_org="trust-a",
        route_id="route-1",
        partner_id="research-a",
        profile=profile,
        profile_version=version,
        priority=priority,
    )


class Lookups:
    """Profiles and keys from dicts, recording what was asked."""

    def __init__(
        self, profiles: dict[tuple[str, int], Profile] | None = None, keys: dict[str, bytes] | None = None
    ) -> None:
        self.profiles = profiles or {}
        self.keys = keys or {}
        self.asked: list[str] = []

    def profile(self, name: str, version: int) -> Profile | None:
        self.asked.append(f"profile {name} {version}")
        return self.profiles.get((name, version))

    def key(self, partner: str) -> bytes | None:
        self.asked.append(f"key {partner}")
        return self.keys.get(partner)


def test_a_care_transfer_passes_through_without_asking_for_a_profile_or_key() -> None:
    lookups = Lookups()
    assert plan(routed(profile=""), lookups.profile, lookups.key) == PassThrough()
    assert lookups.asked == []


@pytest.mark.parametrize(("version", "detail"), [(0, "ai"), (3, "ai v3")])
def test_an_unknown_profile_is_quarantined_without_asking_for_the_partners_key(version: int, detail: str) -> None:
    lookups = Lookups(keys={"research-a": KEY})
    decided = plan(routed(version=version), lookups.profile, lookups.key)
    assert decided == Quarantine(Refusal("unknown-profile", detail))
    assert lookups.asked == [f"profile ai {version}"]


def test_a_partner_without_a_key_is_quarantined() -> None:
    lookups = Lookups(profiles={("ai", 0): AI})
    decided = plan(routed(), lookups.profile, lookups.key)
    assert decided == Quarantine(Refusal("unknown-partner", "research-a"))


def test_a_known_profile_and_partner_are_de_identified_with_that_profile_and_key() -> None:
    lookups = Lookups(profiles={("ai", 0): AI}, keys={"research-a": KEY})
    assert plan(routed(), lookups.profile, lookups.key) == Deidentify(AI, KEY)
    assert lookups.asked == ["profile ai 0", "key research-a"]


def test_a_failing_lookup_is_raised_for_the_bus_to_retry() -> None:
    def unavailable(_partner: str) -> bytes | None:
        raise TransientError("partner keys unavailable")

    with pytest.raises(TransientError):
        plan(routed(), lambda _n, _v: AI, unavailable)


def test_a_passed_through_instance_is_sent_as_it_came_on_its_priority_lane() -> None:
    [message] = prepared_event(routed(profile="", priority=pb.PRIORITY_CLASS_URGENT), TOPICS, clock)

    assert (message.topic, message.key) == (TOPICS.lane(TOPICS.prepared, "urgent"), b"1.2.3")
    event = pb.InstancePrepared.FromString(message.value)
    assert not event.deidentified and event.profile_version == 0
    assert (event.instance, event.blob) == (SOURCE, SOURCE_BLOB)
    assert (event.source_instance, event.source_blob) == (SOURCE, SOURCE_BLOB)
    assert (event.meta.causation_id, event.meta.occurred_at_ms, event.meta.ingested_at_ms) == ("e1", NOW, 1)


def test_a_de_identified_instance_is_sent_as_released_and_names_its_source() -> None:
    [message] = prepared_event(routed(), TOPICS, clock, RELEASED)

    # Keyed by the source study, like every event before delivery: a study stays on one partition.
    assert (message.topic, message.key) == (TOPICS.prepared, b"1.2.3")
    event = pb.InstancePrepared.FromString(message.value)
    assert event.deidentified and (event.profile, event.profile_version) == ("ai", 4)
    assert (event.instance, event.blob) == (RELEASED.instance, RELEASED.blob)
    assert (event.source_instance, event.source_blob) == (SOURCE, SOURCE_BLOB)
    assert (event.partner_id, event.route_id, event.source_org) == ("research-a", "route-1", "trust-a")


def test_the_event_id_depends_on_the_routed_event_only() -> None:
    [passed] = prepared_event(routed(profile=""), TOPICS, clock)
    [prepared] = prepared_event(routed(), TOPICS, lambda: NOW + 1, RELEASED)
    ids = {pb.InstancePrepared.FromString(m.value).meta.event_id for m in (passed, prepared)}
    assert len(ids) == 1


def test_released_names_the_result_and_the_profile_version_applied() -> None:
    result = DeidResult(
        chunks=(),
        study_instance_uid="2.25.1",
        series_instance_uid="2.25.2",
        sop_instance_uid="2.25.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1.99",
        modality="CT",
        patient_id="pseudonym",
        pixels_cleaned=False,
    )
    release = released(AI, result, "ef" * 32, 1482)
    assert release == Released(
        profile_version=4,
        instance=instance_ref("2.25.1", "2.25.2", "2.25.3", transfer_syntax="1.2.840.10008.1.2.1.99"),
        blob=blob_ref("ef", 1482),
    )


def test_a_refusal_is_quarantined_with_its_reason_and_the_routed_event() -> None:
    [message] = quarantine_event(routed(), Refusal("phi-leak", "(0010,0010)"), TOPICS, clock)

    assert (message.topic, message.key) == (TOPICS.quarantine, b"1.2.3")
    event = pb.Quarantined.FromString(message.value)
    assert (event.stage, event.reason, event.detail) == ("deid", "phi-leak", "(0010,0010)")
    assert (event.instance, event.blob, event.partner_id, event.route_id) == (
        SOURCE,
        SOURCE_BLOB,
        "research-a",
        "route-1",
    )
    assert (event.meta.causation_id, event.meta.occurred_at_ms) == ("e1", NOW)

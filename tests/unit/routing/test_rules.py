"""Which partners an instance goes to, and with which profile."""

from __future__ import annotations

import pytest

from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2
from services.routing.handler import route_event
from services.routing.rules import Route, RouteMatch, RoutingInput, decide, validate_route

CT = {
    "modality": "CT",
    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
    "study_description": "CT HEAD",
    "body_part_examined": "HEAD",
}


def _item(org: str = "trust-a", requested: str = "", **attrs: str) -> RoutingInput:
    return RoutingInput(org, requested, {**CT, **attrs})


def test_every_set_criterion_must_match_and_unset_ones_match_anything() -> None:
    route = Route("r", "p", match=RouteMatch(source_orgs=("trust-a",), modalities=("ct",), body_part="he*"))
    assert decide([route], _item())
    assert not decide([route], _item(org="trust-b"))
    assert not decide([route], _item(modality="MR"))
    assert not decide([route], _item(body_part_examined="CHEST"))
    assert decide([Route("any", "p")], _item(org="whoever", modality="US"))


def test_study_description_is_a_case_insensitive_glob() -> None:
    route = Route("r", "p", match=RouteMatch(study_description="*head*"))
    assert decide([route], _item(study_description="ct Head w/o"))
    assert not decide([route], _item(study_description="CT CHEST"))


def test_a_requested_destination_rule_needs_the_sender_to_ask_for_it() -> None:
    route = Route("r", "stroke-net", match=RouteMatch(requested_destination="stroke-*"))
    assert decide([route], _item(requested="stroke-net"))
    assert not decide([route], _item())


def test_one_copy_per_partner_and_the_lowest_priority_decides_the_profile() -> None:
    routes = [
        Route("b-research", "lab", profile="research", priority=20),
        Route("a-basic", "lab", profile="basic", priority=10),
        Route("care", "trust", priority=30),
        Route("off", "other", enabled=False),
    ]
    decisions = decide(routes, _item())
    assert [(d.partner_id, d.profile) for d in decisions] == [("lab", "basic"), ("trust", "")]


def test_ids_and_partners_are_validated() -> None:
    with pytest.raises(ValueError):
        validate_route(Route("Bad Id", "p"))
    with pytest.raises(ValueError):
        validate_route(Route("ok", "Not A Partner"))
    with pytest.raises(ValueError, match="not a valid modality"):
        validate_route(Route("ok", "p", match=RouteMatch(modalities=("CT ",))))  # ingest strips it: never matched
    with pytest.raises(ValueError, match="at least 1"):
        validate_route(Route("ok", "p", priority=-5))  # below "unset" (0, saved as 100): said, not reordered


def _ingested(requested: str = "") -> events_pb2.InstanceIngested:
    return events_pb2.InstanceIngested(
        meta=events_pb2.EventMeta(event_id="e1", ingested_at_ms=1000),
        instance=events_pb2.InstanceRef(study_instance_uid="1.2.3", sop_instance_uid="1.2.3.4"),
        source_org="trust-a",
        requested_destination=requested,
        routing_attributes=CT,
    )


def test_one_routed_event_per_partner_with_deterministic_ids() -> None:
    routes = [Route("care", "trust"), Route("research", "lab", profile="research")]
    first = route_event(_ingested(), routes, Topics(), clock=lambda: 5)
    again = route_event(_ingested(), routes, Topics(), clock=lambda: 9)
    assert [m.topic for m in first] == ["imx.routed.v1", "imx.routed.v1"]
    assert all(m.key == b"1.2.3" for m in first)
    ids = [events_pb2.InstanceRouted.FromString(m.value).meta.event_id for m in first]
    assert ids == [events_pb2.InstanceRouted.FromString(m.value).meta.event_id for m in again]
    assert len(set(ids)) == 2
    routed = events_pb2.InstanceRouted.FromString(first[1].value)
    assert (routed.partner_id, routed.profile, routed.meta.causation_id, routed.meta.ingested_at_ms) == (
        "lab",
        "research",
        "e1",
        1000,
    )


def test_no_matching_route_quarantines_with_reason_no_route() -> None:
    [message] = route_event(
        _ingested(requested="nobody"), [Route("ct", "lab", match=RouteMatch(modalities=("MR",)))], Topics("x.")
    )
    assert message.topic == "x.imx.quarantine.v1"
    event = events_pb2.Quarantined.FromString(message.value)
    assert (event.stage, event.reason, event.source_org) == ("routing", "no-route", "trust-a")

"""Routing stage: one InstanceIngested in, one InstanceRouted per matched partner out (or quarantine)."""

from __future__ import annotations

from collections.abc import Callable

from services.common.events import derived_meta, event_message, now_ms
from services.common.lanes import lane_for
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.quarantine_events import NO_ROUTE, quarantined
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2
from services.routing.rules import Route, RoutingInput, decide


def route_event(
    ingested: events_pb2.InstanceIngested, routes: list[Route], topics: Topics, clock: Callable[[], int] = now_ms
) -> list[OutgoingMessage]:
    item = RoutingInput(ingested.source_org, ingested.requested_destination, dict(ingested.routing_attributes))
    study = ingested.instance.study_instance_uid
    decisions = decide(routes, item)
    if not decisions:
        # The requested destination is a partner id, checked when the instance was accepted.
        wanted = f"requested destination {ingested.requested_destination}" if ingested.requested_destination else ""
        event = quarantined("routing", NO_ROUTE, wanted, ingested, clock)
        return [event_message(topics.quarantine, event, study)]
    outputs = []
    for decision in decisions:
        routed = events_pb2.InstanceRouted(
            # Deterministic: a replay of the same input with the same decision gives the same id.
            meta=derived_meta("routed", ingested.meta, decision.partner_id, clock=clock),
            instance=ingested.instance,
            blob=ingested.blob,
            source_org=ingested.source_org,
            route_id=decision.route_id,
            partner_id=decision.partner_id,
            profile=decision.profile,
            priority=f"PRIORITY_CLASS_{decision.priority_class.upper()}",
        )
        outputs.append(event_message(topics.lane(topics.routed, lane_for(routed.priority)), routed, study))
    return outputs


def build_routing_handler(
    current_routes: Callable[[], list[Route]], topics: Topics
) -> Callable[[IncomingMessage], list[OutgoingMessage]]:
    def handle(message: IncomingMessage) -> list[OutgoingMessage]:
        ingested = events_pb2.InstanceIngested.FromString(message.value)
        return route_event(ingested, current_routes(), topics)

    return handle

"""RoutingAdmin gRPC servicer: list, add, remove and test routes at run time."""

from __future__ import annotations

import grpc

from services.common.control_server import ServicerRegistration
from services.common.messages import shown
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from services.routing.rules import Route, RouteMatch, RoutingInput, decide
from services.routing.store import RouteStore


def priority_class_to_proto(name: str) -> str:
    """The enum's name, which protobuf accepts wherever the enum is expected."""
    return f"PRIORITY_CLASS_{name.upper()}"


def priority_class_from_proto(value: int) -> str:
    """Unset (0) is routine."""
    if value == events_pb2.PRIORITY_CLASS_UNSPECIFIED:
        return "routine"
    return events_pb2.PriorityClass.Name(value).removeprefix("PRIORITY_CLASS_").lower()


def route_to_proto(route: Route) -> admin_pb2.Route:
    m = route.match
    return admin_pb2.Route(
        route_id=route.route_id,
        name=route.name,
        priority=route.priority,
        partner_id=route.partner_id,
        profile=route.profile,
        version=route.version,
        enabled=route.enabled,
        priority_class=priority_class_to_proto(route.priority_class),
        match=admin_pb2.RouteMatch(
            source_orgs=list(m.source_orgs),
            modalities=list(m.modalities),
            sop_class_uids=list(m.sop_class_uids),
            study_description=m.study_description,
            body_part=m.body_part,
            requested_destination=m.requested_destination,
        ),
    )


def route_from_proto(msg: admin_pb2.Route) -> Route:
    m = msg.match
    return Route(
        route_id=msg.route_id,
        name=msg.name,
        priority=msg.priority or 100,
        partner_id=msg.partner_id,
        profile=msg.profile,
        enabled=msg.enabled,
        priority_class=priority_class_from_proto(msg.priority_class),
        match=RouteMatch(
            source_orgs=tuple(m.source_orgs),
            modalities=tuple(m.modalities),
            sop_class_uids=tuple(m.sop_class_uids),
            study_description=m.study_description,
            body_part=m.body_part,
            requested_destination=m.requested_destination,
        ),
    )


class RoutingAdminServicer(admin_pb2_grpc.RoutingAdminServicer):
    def __init__(self, store: RouteStore) -> None:
        self._store = store

    def ListRoutes(
        self, request: admin_pb2.ListRoutesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRoutesReply:
        return admin_pb2.ListRoutesReply(routes=[route_to_proto(r) for r in self._store.list()])

    def AddRoute(self, request: admin_pb2.AddRouteRequest, context: grpc.ServicerContext) -> admin_pb2.AddRouteReply:
        try:
            saved = self._store.add(route_from_proto(request.route))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return admin_pb2.AddRouteReply(route=route_to_proto(saved), warnings=self._store.unmet_references(saved))

    def RemoveRoute(
        self, request: admin_pb2.RemoveRouteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemoveRouteReply:
        if not self._store.remove(request.route_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no route {shown(request.route_id)}")
        return admin_pb2.RemoveRouteReply(removed=True)

    def TestRoute(self, request: admin_pb2.TestRouteRequest, context: grpc.ServicerContext) -> admin_pb2.TestRouteReply:
        item = RoutingInput(request.source_org, request.requested_destination, dict(request.routing_attributes))
        decisions = decide(self._store.list(), item)
        return admin_pb2.TestRouteReply(
            decisions=[
                admin_pb2.RouteDecision(
                    route_id=d.route_id,
                    partner_id=d.partner_id,
                    profile=d.profile,
                    priority_class=priority_class_to_proto(d.priority_class),
                )
                for d in decisions
            ]
        )


def register_routing_admin(store: RouteStore) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_RoutingAdminServicer_to_server(RoutingAdminServicer(store), server)

    return register

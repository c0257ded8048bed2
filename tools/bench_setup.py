"""`make bench`'s configuration through the services' admin APIs: its sending organisation, its partner
with that partner's Kafka sign-in and DICOMweb key, and its one route — and nothing else routing its
instances, so a run measures its own route alone.

- One fixed route id (`bench`), replaced each run. Routes of earlier versions of the bench (one per
  run, to `bench-partner`) and organisations named `bench-*` left by interrupted runs are removed.
- The organisation is new each run (`bench-<hex>`): ingest's event ids include the sender, so files
  sent again as they are (`--reuse-content`) are not deduplicated as a re-send. It is removed at the
  end together with the route.
- Any other enabled route that can match the bench's organisation (no `source_orgs`, as the demo's
  `research` and `ct-for-3d` routes) would send every bench instance to another partner too: such
  routes are disabled for the run and enabled again at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from services.cli.settings import CliSettings
from services.common.control_channel import control_channel
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

PARTNER = "bench-partner"
ROUTE_ID = "bench"
ORG_PREFIX = "bench-"


@dataclass(frozen=True)
class PartnerCredentials:
    username: str
    password: str
    security_protocol: str
    dicomweb_key: str


@dataclass
class BenchConfig:
    org: str
    ae_title: str
    credentials: PartnerCredentials
    disabled: list[admin_pb2.Route] = field(default_factory=list)  # others' routes, to enable again


def bench_owned_routes(routes: Iterable[admin_pb2.Route]) -> list[str]:
    """Route ids the bench made: its fixed route and the per-run routes of earlier versions."""
    return [r.route_id for r in routes if r.route_id == ROUTE_ID or r.partner_id == PARTNER]


def competing_routes(
    routes: Iterable[admin_pb2.Route], org: str, partner: str = PARTNER, own: Iterable[str] = (ROUTE_ID,)
) -> list[admin_pb2.Route]:
    """Enabled routes not the run's (route ids `own`, or to its `partner`) that can match an instance
    from `org` (any route restricted to other senders cannot)."""
    own = set(own)
    return [
        r
        for r in routes
        if r.enabled
        and r.route_id not in own
        and r.partner_id != partner
        and (not r.match.source_orgs or org in r.match.source_orgs)
    ]


def own_route(route_id: str, name: str, partner: str, org: str, profile: str) -> admin_pb2.Route:
    """A run's route: everything one sender sends, to the run's partner, ahead of any other route."""
    return admin_pb2.Route(
        route_id=route_id,
        name=name,
        partner_id=partner,
        profile=profile,
        priority=1,
        enabled=True,
        match=admin_pb2.RouteMatch(source_orgs=[org]),
    )


def disable_competing(
    routes: admin_pb2_grpc.RoutingAdminStub,
    listed: Iterable[admin_pb2.Route],
    orgs: Iterable[str],
    partner: str,
    own: Iterable[str],
    disabled: list[admin_pb2.Route],
) -> None:
    """Disable every route `competing_routes` finds for any of `orgs`, each appended to `disabled` once
    it is (so a failure half-way still leaves the list of what to enable again)."""
    listed, own = list(listed), tuple(own)
    competing = [r for org in orgs for r in competing_routes(listed, org, partner, own)]
    for route in {r.route_id: r for r in competing}.values():
        routes.AddRoute(admin_pb2.AddRouteRequest(route=with_enabled(route, False)), timeout=10)
        disabled.append(route)


def enable_again(routes: admin_pb2_grpc.RoutingAdminStub, disabled: Iterable[admin_pb2.Route]) -> None:
    for route in disabled:
        routes.AddRoute(admin_pb2.AddRouteRequest(route=with_enabled(route, True)), timeout=10)


def stale_orgs(orgs: Iterable[admin_pb2.Organisation], keep: str = "") -> list[str]:
    return [o.org_id for o in orgs if o.org_id.startswith(ORG_PREFIX) and o.org_id != keep]


def _partner_credentials(channel: grpc.Channel) -> PartnerCredentials:
    partners = admin_pb2_grpc.PartnerAdminStub(channel)
    existing = {p.partner_id for p in partners.ListPartners(admin_pb2.ListPartnersRequest(), timeout=10).partners}
    if PARTNER in existing:
        access = partners.ResetPartnerPassword(
            admin_pb2.ResetPartnerPasswordRequest(partner_id=PARTNER), timeout=30
        ).kafka_access
        key = partners.ResetPartnerDicomwebKey(
            admin_pb2.ResetPartnerDicomwebKeyRequest(partner_id=PARTNER), timeout=10
        ).dicomweb_key
    else:
        reply = partners.AddPartner(
            admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=PARTNER, name="benchmark")), timeout=30
        )
        access, key = reply.kafka_access, reply.dicomweb_key
    if not access.username or not access.password:
        raise RuntimeError("delivery issued no Kafka sign-in for the bench partner (is the partner listener on?)")
    return PartnerCredentials(access.username, access.password, access.security_protocol or "SASL_PLAINTEXT", key)


def configure(cli: CliSettings, org: str, ae_title: str, profile: str) -> BenchConfig:
    with control_channel(cli.ingest_grpc) as channel:
        orgs = admin_pb2_grpc.OrganisationAdminStub(channel)
        listed = orgs.ListOrganisations(admin_pb2.ListOrganisationsRequest(), timeout=10).organisations
        for stale in stale_orgs(listed):
            orgs.RemoveOrganisation(admin_pb2.RemoveOrganisationRequest(org_id=stale), timeout=10)
        orgs.AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(org_id=org, name="make bench", ae_titles=[ae_title])
            ),
            timeout=10,
        )
    with control_channel(cli.delivery_grpc) as channel:
        credentials = _partner_credentials(channel)
    config = BenchConfig(org, ae_title, credentials)
    with control_channel(cli.routing_grpc) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        listed_routes = list(routes.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=10).routes)
        for route_id in bench_owned_routes(listed_routes):
            routes.RemoveRoute(admin_pb2.RemoveRouteRequest(route_id=route_id), timeout=10)
        disable_competing(routes, listed_routes, [org], PARTNER, [ROUTE_ID], config.disabled)
        routes.AddRoute(
            admin_pb2.AddRouteRequest(route=own_route(ROUTE_ID, "make bench", PARTNER, org, profile)), timeout=10
        )
        decisions = routes.TestRoute(
            admin_pb2.TestRouteRequest(source_org=org, routing_attributes={"Modality": "CT"}), timeout=10
        ).decisions
    others = [d.route_id for d in decisions if d.route_id != ROUTE_ID]
    if others:
        unconfigure(cli, config)
        raise RuntimeError(f"routes other than the bench's still match its sender: {', '.join(others)}")
    return config


def unconfigure(cli: CliSettings, config: BenchConfig) -> None:
    """Remove the run's route and organisation; enable again the routes it disabled."""
    with control_channel(cli.routing_grpc) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        try:
            routes.RemoveRoute(admin_pb2.RemoveRouteRequest(route_id=ROUTE_ID), timeout=10)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        enable_again(routes, config.disabled)
    with control_channel(cli.ingest_grpc) as channel:
        try:
            admin_pb2_grpc.OrganisationAdminStub(channel).RemoveOrganisation(
                admin_pb2.RemoveOrganisationRequest(org_id=config.org), timeout=10
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise


def with_enabled(route: admin_pb2.Route, enabled: bool) -> admin_pb2.Route:
    copy = admin_pb2.Route()
    copy.CopyFrom(route)
    copy.enabled = enabled
    return copy

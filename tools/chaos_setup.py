"""`make chaos`'s configuration through the services' admin APIs: two sending organisations (the
ledgered run by C-STORE; the malformed inputs by C-STORE and STOW-RS, with an API key), an analyst to
read the ledgered run's audit trails, one partner
whose PACS (a storescp the run starts) is reached by imx's central gateways, and two routes to it:
the ledgered run's with a de-identification profile, the malformed inputs' pass-through (so what they
became is found by its SOP Instance UID). Routes that would also match the run's senders are disabled
for the run and enabled again at the end, as `make bench` does (tools/bench_setup.py)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from services.cli.settings import CliSettings
from services.common.control_channel import control_channel
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tools.bench_setup import disable_competing, enable_again, own_route

PARTNER = "chaos-partner"
ROUTE_ID, FUZZ_ROUTE_ID = "chaos", "chaos-fuzz"
ORG_PREFIX = "chaos-"


@dataclass
class ChaosConfig:
    org: str
    ae_title: str
    fuzz_org: str
    fuzz_ae_title: str
    fuzz_api_key: str
    audit_api_key: str = ""  # an analyst's, to read the ledgered run's audit trails back (tools/chaos_trail.py)
    disabled: list[admin_pb2.Route] = field(default_factory=list)


def configure(cli: CliSettings, pacs_url: str, profile: str) -> ChaosConfig:
    token = secrets.token_hex(4)
    config = ChaosConfig(
        org=f"{ORG_PREFIX}{token}",
        ae_title=f"CHAOS{token.upper()}",
        fuzz_org=f"{ORG_PREFIX}fuzz-{token}",
        fuzz_ae_title=f"FUZZ{token.upper()}",
        fuzz_api_key="",
    )
    with control_channel(cli.ingest_grpc) as channel:
        orgs = admin_pb2_grpc.OrganisationAdminStub(channel)
        for org in orgs.ListOrganisations(admin_pb2.ListOrganisationsRequest(), timeout=10).organisations:
            if org.org_id.startswith(ORG_PREFIX):  # left by an interrupted run
                orgs.RemoveOrganisation(admin_pb2.RemoveOrganisationRequest(org_id=org.org_id), timeout=10)
        orgs.AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(org_id=config.org, name="make chaos", ae_titles=[config.ae_title])
            ),
            timeout=10,
        )
        reply = orgs.AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(
                    org_id=config.fuzz_org, name="make chaos, malformed inputs", ae_titles=[config.fuzz_ae_title]
                ),
                issue_api_key=True,
            ),
            timeout=10,
        )
        config.fuzz_api_key = reply.api_key
    with control_channel(cli.delivery_grpc) as channel:
        admin_pb2_grpc.PartnerAdminStub(channel).AddPartner(
            admin_pb2.AddPartnerRequest(
                partner=admin_pb2.Partner(partner_id=PARTNER, name="make chaos", endpoint=pacs_url)
            ),
            timeout=30,
        )
    with control_channel(cli.routing_grpc) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        listed = list(routes.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=10).routes)
        own = (ROUTE_ID, FUZZ_ROUTE_ID)
        disable_competing(routes, listed, [config.org, config.fuzz_org], PARTNER, own, config.disabled)
        for route_id, org, route_profile in ((ROUTE_ID, config.org, profile), (FUZZ_ROUTE_ID, config.fuzz_org, "")):
            route = own_route(route_id, "make chaos", PARTNER, org, route_profile)
            routes.AddRoute(admin_pb2.AddRouteRequest(route=route), timeout=10)
    with control_channel(cli.audit_grpc) as channel:
        analysts = admin_pb2_grpc.AnalystAdminStub(channel)
        for left in analysts.ListAnalysts(admin_pb2.ListAnalystsRequest(), timeout=10).analysts:
            if left.analyst_id.startswith(ORG_PREFIX):  # left by an interrupted run
                analysts.RemoveAnalyst(admin_pb2.RemoveAnalystRequest(analyst_id=left.analyst_id), timeout=10)
        analyst = admin_pb2.Analyst(analyst_id=analyst_id(config), name="make chaos")
        config.audit_api_key = analysts.AddAnalyst(admin_pb2.AddAnalystRequest(analyst=analyst), timeout=10).api_key
    return config


def analyst_id(config: ChaosConfig) -> str:
    return config.org  # chaos-<token>: the run's own


def unconfigure(cli: CliSettings, config: ChaosConfig, warn: Callable[[str], None] = print) -> None:
    """Remove the run's routes and organisations, clear the partner's endpoint (its central gateway
    stops), enable again the routes it disabled, remove its analyst. Each step is tried even when another failed."""
    for step, left_behind in CLEAN_UP:
        try:
            step(cli, config)
        except grpc.RpcError as error:
            warn(f"clean-up step {step.__name__} failed ({error.code().name}); see what is left: `{left_behind}`")


def _remove_routes(cli: CliSettings, config: ChaosConfig) -> None:
    with control_channel(cli.routing_grpc) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        for route_id in (ROUTE_ID, FUZZ_ROUTE_ID):
            try:
                routes.RemoveRoute(admin_pb2.RemoveRouteRequest(route_id=route_id), timeout=10)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        enable_again(routes, config.disabled)


def _remove_orgs(cli: CliSettings, config: ChaosConfig) -> None:
    with control_channel(cli.ingest_grpc) as channel:
        orgs = admin_pb2_grpc.OrganisationAdminStub(channel)
        for org in (config.org, config.fuzz_org):
            try:
                orgs.RemoveOrganisation(admin_pb2.RemoveOrganisationRequest(org_id=org), timeout=10)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise


def _clear_endpoint(cli: CliSettings, config: ChaosConfig) -> None:
    with control_channel(cli.delivery_grpc) as channel:
        admin_pb2_grpc.PartnerAdminStub(channel).AddPartner(
            admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=PARTNER, name="make chaos", endpoint="")),
            timeout=60,
        )


def _remove_analyst(cli: CliSettings, config: ChaosConfig) -> None:
    if config.audit_api_key:
        with control_channel(cli.audit_grpc) as channel:
            admin_pb2_grpc.AnalystAdminStub(channel).RemoveAnalyst(
                admin_pb2.RemoveAnalystRequest(analyst_id=analyst_id(config)), timeout=10
            )


# Each step of `unconfigure`, with the command that shows what it leaves behind when it fails.
CLEAN_UP: tuple[tuple[Callable[[CliSettings, ChaosConfig], None], str], ...] = (
    (_remove_routes, "imx routes list"),
    (_remove_orgs, "imx orgs list"),
    (_clear_endpoint, "imx partners list"),
    (_remove_analyst, "imx analysts list"),
)

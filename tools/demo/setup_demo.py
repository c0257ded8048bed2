"""The demo's organisations, partners and routes, configured through the services' admin APIs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.cli.settings import CliSettings
from services.common.control_channel import control_channel
from services.common.dicom.synthetic import DEMO_SOURCES
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

# Three sending trusts; their calling AE titles are the synthetic data's sources.
TRUSTS = {"trust-north": DEMO_SOURCES[0], "trust-east": DEMO_SOURCES[1], "trust-west": DEMO_SOURCES[2]}
PARTNERS = {
    "st-elsewhere": "St Elsewhere Hospital (care transfer, identifiable)",
    "research-lab": "University research group (de-identified, research profile)",
    "print3d": "3D-modelling company (de-identified CT only, basic profile)",
}
ROUTES = [
    admin_pb2.Route(
        route_id="care-transfer",
        priority=10,
        partner_id="st-elsewhere",
        profile="",
        match=admin_pb2.RouteMatch(source_orgs=["trust-north", "trust-east"]),
        enabled=True,
    ),
    admin_pb2.Route(
        route_id="research",
        priority=20,
        partner_id="research-lab",
        profile="research",
        match=admin_pb2.RouteMatch(),
        enabled=True,
    ),
    admin_pb2.Route(
        route_id="ct-for-3d",
        priority=30,
        partner_id="print3d",
        profile="basic",
        match=admin_pb2.RouteMatch(modalities=["CT"]),
        enabled=True,
    ),
]


@dataclass(frozen=True)
class DemoConfig:
    api_keys: dict[str, str]  # org id -> API key (issued now, kept only in memory)
    audit_api_key: str  # the demo's own analyst key, to read the audit trails back


def partner_folder(received: Path, partner_id: str) -> Path:
    """Where the central gateway stores the partner's instances (its endpoint)."""
    return received / partner_id


def configure(cli: CliSettings, received: Path) -> DemoConfig:
    """Trusts, partners, routes and an analyst key. Each partner is registered with a folder endpoint
    under `received`, so imx's central gateway stores what it is sent there."""
    keys: dict[str, str] = {}
    with control_channel(cli.ingest_grpc) as channel:
        orgs = admin_pb2_grpc.OrganisationAdminStub(channel)
        for org_id, ae in TRUSTS.items():
            reply = orgs.AddOrganisation(
                admin_pb2.AddOrganisationRequest(
                    organisation=admin_pb2.Organisation(org_id=org_id, name=org_id, ae_titles=[ae]),
                    issue_api_key=True,
                ),
                timeout=10,
            )
            keys[org_id] = reply.api_key
    with control_channel(cli.delivery_grpc) as channel:
        partners = admin_pb2_grpc.PartnerAdminStub(channel)
        for partner_id, name in PARTNERS.items():
            folder = partner_folder(received, partner_id)
            folder.mkdir(parents=True, exist_ok=True)  # the gateway waits for a missing one, never makes it
            endpoint = folder.resolve().as_uri()
            partners.AddPartner(
                admin_pb2.AddPartnerRequest(
                    partner=admin_pb2.Partner(partner_id=partner_id, name=name, endpoint=endpoint)
                ),
                timeout=30,
            )
    with control_channel(cli.routing_grpc) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        for route in ROUTES:
            routes.AddRoute(admin_pb2.AddRouteRequest(route=route), timeout=10)
    with control_channel(cli.audit_grpc) as channel:
        analysts = admin_pb2_grpc.AnalystAdminStub(channel)
        analyst = admin_pb2.Analyst(analyst_id="demo", name="make run")
        audit_key = analysts.AddAnalyst(admin_pb2.AddAnalystRequest(analyst=analyst), timeout=10).api_key
    return DemoConfig(keys, audit_key)

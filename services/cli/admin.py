"""`imx routes|partners|orgs ...`: thin gRPC clients of the services' admin APIs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli.settings import CliSettings
from services.common.control_channel import DefaultDeadline, MissingControlToken, control_channel
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, events_pb2

console = Console()
routes_app = typer.Typer(help="Route rules: which partner receives what, with which profile.", no_args_is_help=True)
partners_app = typer.Typer(help="Receiving partners and their topics.", no_args_is_help=True)
orgs_app = typer.Typer(help="Sending organisations: AE titles and API keys.", no_args_is_help=True)
analysts_app = typer.Typer(help="Who may query the audit API (API keys).", no_args_is_help=True)


CALL_DEADLINE_S = 60.0  # a command's call unless it names its own (audit verify reads the whole log)
INT32_MAX = 2**31 - 1  # the proto fields' range: beyond it the request cannot even be built


@contextmanager
def _channel(address: str, failed_exit: int = 1) -> Iterator[grpc.Channel]:
    """A channel carrying the caller's control token (services/common/control_channel.py); gRPC errors
    become one red line and exit status `failed_exit` (1; a command whose 1 means something else gives
    another), a missing token or an unreachable service exit status 2."""
    try:
        channel = control_channel(address)
    except MissingControlToken as missing:
        console.print(f"[red]{missing}[/red]", highlight=False)
        raise typer.Exit(2) from None
    channel = grpc.intercept_channel(channel, DefaultDeadline(CALL_DEADLINE_S))
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
        except grpc.FutureTimeoutError:
            console.print(f"[red]cannot reach {address}[/red]: is the service running? (`make run` starts it)")
            raise typer.Exit(2) from None
        try:
            yield channel
        except grpc.RpcError as exc:
            console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
            raise typer.Exit(failed_exit) from None


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class PriorityClass(StrEnum):
    urgent = "urgent"
    routine = "routine"
    bulk = "bulk"


def _class_name(value: int) -> str:
    return "routine" if not value else events_pb2.PriorityClass.Name(value).removeprefix("PRIORITY_CLASS_").lower()


@routes_app.command("list")
def routes_list() -> None:
    """Show every route rule."""
    with _channel(CliSettings().routing_grpc) as channel:
        reply = admin_pb2_grpc.RoutingAdminStub(channel).ListRoutes(admin_pb2.ListRoutesRequest())
    table = Table("id", "priority", "class", "partner", "profile", "match", "version")
    for r in reply.routes:
        m = r.match
        criteria = ", ".join(
            f"{k}={v}"
            for k, v in [
                ("from", ",".join(m.source_orgs)),
                ("modality", ",".join(m.modalities)),
                ("sop", ",".join(m.sop_class_uids)),
                ("description", m.study_description),
                ("body", m.body_part),
                ("to", m.requested_destination),
            ]
            if v
        )
        table.add_row(
            r.route_id,
            str(r.priority),
            _class_name(r.priority_class),
            r.partner_id,
            r.profile or "(identifiable)",
            criteria or "*",
            str(r.version),
        )
    console.print(table)


@routes_app.command("add")
def routes_add(
    route_id: str,
    partner: Annotated[str, typer.Option("--partner", help="partner id that receives matching instances")],
    profile: Annotated[str, typer.Option(help="de-identification profile; empty = identifiable")] = "",
    from_orgs: Annotated[str, typer.Option("--from", help="sending organisations, comma separated")] = "",
    modality: Annotated[str, typer.Option(help="modalities, comma separated (CT,MR)")] = "",
    sop_class: Annotated[str, typer.Option(help="SOP Class UIDs, comma separated")] = "",
    description: Annotated[str, typer.Option(help="glob on Study Description")] = "",
    body_part: Annotated[str, typer.Option(help="glob on Body Part Examined")] = "",
    requested: Annotated[str, typer.Option(help="glob on the destination the sender asked for")] = "",
    priority: Annotated[
        int, typer.Option(min=1, max=INT32_MAX, help="lower wins when two rules name the same partner")
    ] = 100,
    priority_class: Annotated[
        PriorityClass,
        typer.Option("--class", help="urgent (stroke, trauma) overtakes routine, which overtakes bulk (research)"),
    ] = PriorityClass.routine,
    name: str = "",
) -> None:
    """Add or replace a route rule."""
    route = admin_pb2.Route(
        route_id=route_id,
        name=name,
        priority=priority,
        priority_class=f"PRIORITY_CLASS_{priority_class.value.upper()}",
        partner_id=partner,
        profile=profile,
        enabled=True,
        match=admin_pb2.RouteMatch(
            source_orgs=_csv(from_orgs),
            modalities=_csv(modality),
            sop_class_uids=_csv(sop_class),
            study_description=description,
            body_part=body_part,
            requested_destination=requested,
        ),
    )
    with _channel(CliSettings().routing_grpc) as channel:
        reply = admin_pb2_grpc.RoutingAdminStub(channel).AddRoute(admin_pb2.AddRouteRequest(route=route))
    console.print(f"route {reply.route.route_id} saved (version {reply.route.version})")
    for warning in reply.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


@routes_app.command("remove")
def routes_remove(route_id: str) -> None:
    """Remove a route rule."""
    with _channel(CliSettings().routing_grpc) as channel:
        admin_pb2_grpc.RoutingAdminStub(channel).RemoveRoute(admin_pb2.RemoveRouteRequest(route_id=route_id))
    console.print(f"route {route_id} removed")


@routes_app.command("test")
def routes_test(
    # readable=False: read_input_file checks it, naming no path (Typer's own check printed it whole)
    file: Annotated[Path, typer.Argument(help="a DICOM file", readable=False)],
    from_org: Annotated[str, typer.Option("--from", help="the sending organisation to assume")],
    to: Annotated[str, typer.Option(help="an explicitly requested destination")] = "",
) -> None:
    """Show which rules a DICOM file would match, without sending it."""
    from services.cli.files import read_input_file
    from services.common.dicom.header import InvalidInstance, inspect_instance

    try:
        header = inspect_instance(read_input_file(file), max_bytes=2**31)
    except InvalidInstance as exc:
        console.print(f"[red]not routable[/red]: {exc.reason} {exc.detail}")
        raise typer.Exit(1) from None
    request = admin_pb2.TestRouteRequest(
        source_org=from_org, requested_destination=to, routing_attributes=dict(header.routing)
    )
    with _channel(CliSettings().routing_grpc) as channel:
        reply = admin_pb2_grpc.RoutingAdminStub(channel).TestRoute(request)
    if not reply.decisions:
        console.print("no route matches: the instance would be quarantined (no-route)")
        raise typer.Exit(1)
    table = Table("route", "partner", "profile")
    for d in reply.decisions:
        table.add_row(d.route_id, d.partner_id, d.profile or "(identifiable)")
    console.print(table)


@partners_app.command("list")
def partners_list() -> None:
    """Show partners, their topics and, for those imx's central gateway receives for, their endpoint."""
    with _channel(CliSettings().delivery_grpc) as channel:
        reply = admin_pb2_grpc.PartnerAdminStub(channel).ListPartners(admin_pb2.ListPartnersRequest())
    table = Table("id", "name", "topic", "endpoint (central gateway)")
    for p in reply.partners:
        table.add_row(p.partner_id, p.name, p.topic, p.endpoint)
    console.print(table)


@partners_app.command("add")
def partners_add(
    partner_id: str,
    name: str = "",
    endpoint: Annotated[
        str,
        typer.Option(
            help="where imx's central gateway stores for this partner (dicom://AE@host:port, "
            "https://host/dicomweb, file:///folder); empty: the partner runs `imx gateway` itself"
        ),
    ] = "",
) -> None:
    """Register or update a partner (creates its topics, its pseudonymisation key, its DICOMweb key and
    Kafka sign-in). Adding it again replaces its name and endpoint and keeps its credentials
    (`reset-password` and `reset-key` issue new ones)."""
    with _channel(CliSettings().delivery_grpc) as channel:
        reply = admin_pb2_grpc.PartnerAdminStub(channel).AddPartner(
            admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=partner_id, name=name, endpoint=endpoint))
        )
    console.print(f"partner {reply.partner.partner_id} receives on topic {reply.partner.topic}")
    if reply.updated:
        console.print(
            "it was registered already: name and endpoint replaced, its Kafka password and DICOMweb key kept "
            "(`imx partners reset-password` / `reset-key` issue new ones)"
        )
    if reply.partner.endpoint:
        console.print(f"imx's central gateway stores its deliveries to {reply.partner.endpoint}", highlight=False)
    if reply.HasField("kafka_access"):
        _print_access(reply.kafka_access)
    if reply.dicomweb_key:
        _print_dicomweb_key(reply.dicomweb_key)


def _print_dicomweb_key(key: str) -> None:
    console.print(
        "DICOMweb key for the partner's gateway (shown once; `Authorization: Bearer <key>` on "
        f"the retrieval URLs of its feed):\n  dicomweb key       {key}",
        highlight=False,
    )


def _print_access(access: admin_pb2.PartnerKafkaAccess) -> None:
    """The partner's sign-in, shown once: imx does not keep the password."""
    console.print(
        f"Kafka sign-in for the partner (shown once, give it to them over a secure channel):\n"
        f"  bootstrap          {access.bootstrap}\n"
        f"  security protocol  {access.security_protocol}, SASL mechanism {access.mechanism}\n"
        f"  username           {access.username}\n"
        f"  password           {access.password}\n"
        f"  consumer groups    must start with {access.group_prefix!r}",
        highlight=False,
    )


@partners_app.command("reset-password")
def partners_reset_password(partner_id: str) -> None:
    """A new Kafka password for a partner (rotation, or a lost one); the old password stops working."""
    with _channel(CliSettings().delivery_grpc) as channel:
        reply = admin_pb2_grpc.PartnerAdminStub(channel).ResetPartnerPassword(
            admin_pb2.ResetPartnerPasswordRequest(partner_id=partner_id)
        )
    _print_access(reply.kafka_access)


@partners_app.command("reset-key")
def partners_reset_key(partner_id: str) -> None:
    """A new DICOMweb key for a partner; the old key stops working."""
    with _channel(CliSettings().delivery_grpc) as channel:
        reply = admin_pb2_grpc.PartnerAdminStub(channel).ResetPartnerDicomwebKey(
            admin_pb2.ResetPartnerDicomwebKeyRequest(partner_id=partner_id)
        )
    _print_dicomweb_key(reply.dicomweb_key)


@partners_app.command("lag")
def partners_lag() -> None:
    """Each partner's unread backlog against its feed's retention: what it has not read yet, how old
    the oldest unread message is, and how much of the retention that has used (from the delivery
    service's last check, IMX_DELIVERY_RETENTION_CHECK_INTERVAL_S)."""
    with _channel(CliSettings().delivery_grpc) as channel:
        reply = admin_pb2_grpc.PartnerAdminStub(channel).PartnerLag(admin_pb2.PartnerLagRequest())
    if not reply.partners:
        console.print("no check has run yet (the delivery service checks every few minutes)")
        return
    table = Table("partner", "unread", "oldest unread", "retention", "used", "expired unread")
    for b in reply.partners:
        used = f"{b.retention_used:.0%}"
        table.add_row(
            b.partner_id,
            f"{b.unread:,}",
            _duration(b.oldest_unread_age_ms),
            _duration(b.retention_ms),
            f"[red]{used}[/red]" if b.retention_used >= 0.8 else used,
            f"[red]{b.expired:,}[/red]" if b.expired else "0",
        )
    console.print(table)


def _duration(ms: int) -> str:
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@partners_app.command("remove")
def partners_remove(partner_id: str) -> None:
    """Remove a partner; instances routed to it are then quarantined (unknown-partner)."""
    with _channel(CliSettings().delivery_grpc) as channel:
        admin_pb2_grpc.PartnerAdminStub(channel).RemovePartner(admin_pb2.RemovePartnerRequest(partner_id=partner_id))
    console.print(f"partner {partner_id} removed")


@orgs_app.command("list")
def orgs_list() -> None:
    """Show sending organisations."""
    with _channel(CliSettings().ingest_grpc) as channel:
        reply = admin_pb2_grpc.OrganisationAdminStub(channel).ListOrganisations(admin_pb2.ListOrganisationsRequest())
    table = Table("id", "name", "AE titles", "C-STORE from")
    for o in reply.organisations:
        table.add_row(o.org_id, o.name, ", ".join(o.ae_titles), ", ".join(o.dicom_from) or "anywhere")
    console.print(table)


@orgs_app.command("add")
def orgs_add(
    org_id: str,
    name: str = "",
    ae_title: Annotated[list[str] | None, typer.Option("--ae-title", help="calling AE title (repeatable)")] = None,
    dicom_from: Annotated[
        list[str] | None,
        typer.Option(
            "--dicom-from",
            help="a network (CIDR) its C-STOREs may come from (repeatable; none: anywhere). Binds the AE titles, "
            "which travel in the clear, to the site",
        ),
    ] = None,
    api_key: Annotated[bool, typer.Option("--api-key", help="issue an API key for STOW-RS (shown once)")] = False,
) -> None:
    """Register a sending organisation (or replace one: give every AE title and network again)."""
    org = admin_pb2.Organisation(org_id=org_id, name=name, ae_titles=ae_title or [], dicom_from=dicom_from or [])
    with _channel(CliSettings().ingest_grpc) as channel:
        reply = admin_pb2_grpc.OrganisationAdminStub(channel).AddOrganisation(
            admin_pb2.AddOrganisationRequest(organisation=org, issue_api_key=api_key)
        )
    console.print(f"organisation {reply.organisation.org_id} saved")
    if reply.api_key:
        console.print(f"API key (shown once, keep it safe): {reply.api_key}")


@orgs_app.command("remove")
def orgs_remove(org_id: str) -> None:
    """Remove a sending organisation (its AE titles and key stop working)."""
    with _channel(CliSettings().ingest_grpc) as channel:
        admin_pb2_grpc.OrganisationAdminStub(channel).RemoveOrganisation(
            admin_pb2.RemoveOrganisationRequest(org_id=org_id)
        )
    console.print(f"organisation {org_id} removed")


@analysts_app.command("add")
def analysts_add(
    analyst_id: str,
    name: str = "",
    scope: Annotated[
        str, typer.Option(help="what the key sees: all, org:<organisation id> or partner:<partner id>")
    ] = "all",
) -> None:
    """Issue an audit API key for an analyst (shown once; an earlier key of theirs stops working)."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = admin_pb2_grpc.AnalystAdminStub(channel).AddAnalyst(
            admin_pb2.AddAnalystRequest(analyst=admin_pb2.Analyst(analyst_id=analyst_id, name=name, scope=scope))
        )
    console.print(
        f"analyst {reply.analyst.analyst_id} (scope {reply.analyst.scope}): API key (shown once) {reply.api_key}\n"
        f"use it as `Authorization: Bearer <key>` on the audit API",
        highlight=False,
    )


@analysts_app.command("list")
def analysts_list() -> None:
    """Show the analysts who hold an audit API key."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = admin_pb2_grpc.AnalystAdminStub(channel).ListAnalysts(admin_pb2.ListAnalystsRequest())
    table = Table("id", "name")
    for analyst in reply.analysts:
        table.add_row(analyst.analyst_id, analyst.name)
    console.print(table)


@analysts_app.command("remove")
def analysts_remove(analyst_id: str) -> None:
    """Withdraw an analyst's key (refused by the audit API within seconds)."""
    with _channel(CliSettings().audit_grpc) as channel:
        admin_pb2_grpc.AnalystAdminStub(channel).RemoveAnalyst(admin_pb2.RemoveAnalystRequest(analyst_id=analyst_id))
    console.print(f"analyst {analyst_id} removed")


def _pause_or_resume(service: str, pause: bool) -> None:
    from services.cli.status import addresses
    from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc

    known = addresses(CliSettings())
    if service not in known:
        console.print(f"[red]no service {escape(service)!r}[/red]: one of {', '.join(known)}")
        raise typer.Exit(2)
    with _channel(known[service]) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        paused = (
            control.Pause(control_pb2.PauseRequest()).paused
            if pause
            else control.Resume(control_pb2.ResumeRequest()).paused
        )
    console.print(f"{service} {'paused' if paused else 'running'}")


def pause(service: Annotated[str, typer.Argument(help="ingest, routing, deid, delivery, audit or gateways")]) -> None:
    """Stop a service taking new work (operator token): ingest answers senders "try again" (A700, 503),
    a stage stops reading its topic, whose messages then wait for it; nothing is lost. `imx status`
    shows it paused."""
    _pause_or_resume(service, pause=True)


def resume(service: Annotated[str, typer.Argument(help="ingest, routing, deid, delivery, audit or gateways")]) -> None:
    """Let a paused service take work again (operator token)."""
    _pause_or_resume(service, pause=False)

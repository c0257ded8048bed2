"""`imx status`: every service's state at a glance.

Health comes from grpc.health.v1 (no token needed): SERVING, NOT_SERVING (e.g. during a Kafka or
MongoDB outage) or unreachable. Paused, processed, failed and lag come from each service's
imx.v1.Control Status, and the partners whose unread backlog is near their feed's retention from
delivery's PartnerAdmin.PartnerLag; both need a control token (operator is enough). Exit status 0 when
every service is SERVING, 1 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from services.cli.settings import CliSettings
from services.common.control_channel import MissingControlToken, control_channel, find_control_token
from services.common.health_probe import check
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, control_pb2, control_pb2_grpc

console = Console()
TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServiceState:
    name: str
    address: str
    health: str  # SERVING, NOT_SERVING or "unreachable"
    status: control_pb2.StatusReply | None = None
    problem: str = ""  # why there is no status (a gRPC code name, "no token")
    required: bool = True  # False: its absence is no failure (OPTIONAL)

    @property
    def failing(self) -> bool:
        return self.health != "SERVING" and (self.required or self.health != "unreachable")


def addresses(cli: CliSettings) -> dict[str, str]:
    return {
        "ingest": cli.ingest_grpc,
        "routing": cli.routing_grpc,
        "deid": cli.deid_grpc,
        "delivery": cli.delivery_grpc,
        "audit": cli.audit_grpc,
        "gateways": cli.gateways_grpc,
    }


# Run only where partners give an endpoint (`imx serve gateways`); docker compose and the chart do not run
# them. Away, they are said to be so without failing the command, unless their address was given.
OPTIONAL = {"gateways": "gateways_grpc"}


def required(name: str, cli: CliSettings) -> bool:
    return name not in OPTIONAL or OPTIONAL[name] in cli.model_fields_set


def health_word(answer: str) -> str:
    """health_probe.check's answer as one word: a served status's name, or "unreachable"."""
    return answer if answer in ("SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN") else "unreachable"


def row(state: ServiceState) -> list[str]:
    """One line of the table: health, paused, processed, failed, total lag."""
    health = {"SERVING": "[green]SERVING[/green]", "NOT_SERVING": "[red]NOT_SERVING[/red]"}.get(
        state.health, f"[red]{state.health}[/red]"
    )
    s = state.status
    if s is None and state.health == "unreachable" and not state.required:
        note = f"not running here (optional; IMX_{OPTIONAL[state.name].upper()}={state.address} to require it)"
        return [state.name, "[dim]not running[/dim]", "-", "-", "-", "-", note]
    if s is None:
        where = f"nothing answers at {state.address}" if state.health == "unreachable" else "-"
        return [state.name, health, "-", "-", "-", "-", state.problem or where]
    lag = sum(item.lag for item in s.lag)
    return [
        state.name,
        health,
        "[yellow]yes[/yellow]" if s.paused else "no",
        f"{s.processed:,}",
        f"[red]{s.failed:,}[/red]" if s.failed else "0",
        f"{lag:,}",
        f"{s.throughput_per_s:.1f}/s, up {s.uptime_s}s",
    ]


def near_retention(backlogs: list[admin_pb2.PartnerBacklog], warn_at: float) -> list[admin_pb2.PartnerBacklog]:
    """Partners whose oldest unread message has used `warn_at` of its retention, or lost some already."""
    return [b for b in backlogs if b.retention_used >= warn_at or b.expired]


def _status(address: str, token: str | None) -> tuple[control_pb2.StatusReply | None, str]:
    if token is None:
        return None, "no control token"
    with control_channel(address, token) as channel:
        try:
            return control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=TIMEOUT_S), ""
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return None, code.name if code else "error"


def _backlogs(address: str, token: str | None) -> tuple[list[admin_pb2.PartnerBacklog], str]:
    if token is None:
        return [], "no control token"
    with control_channel(address, token) as channel:
        try:
            partners = admin_pb2_grpc.PartnerAdminStub(channel)
            reply = partners.PartnerLag(admin_pb2.PartnerLagRequest(), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return [], code.name if code else "error"
    return list(reply.partners), ""


def status(
    warn_at: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="list partners whose oldest unread message has used this much of the retention"
        ),
    ] = 0.8,
) -> None:
    """Every service: health (SERVING, NOT_SERVING during a dependency outage, unreachable), paused,
    processed, failed, lag; and the partners whose backlog is near their feed's retention."""
    cli = CliSettings()
    try:
        token: str | None = find_control_token()
    except MissingControlToken as missing:
        console.print(f"[yellow]{missing}[/yellow]: showing health only", highlight=False)
        token = None
    states = []
    for name, address in addresses(cli).items():
        health = health_word(check(address, timeout_s=TIMEOUT_S))
        reply, problem = _status(address, token) if health != "unreachable" else (None, "")
        states.append(ServiceState(name, address, health, reply, problem, required(name, cli)))
    table = Table("service", "health", "paused", "processed", "failed", "lag", "")
    for state in states:
        table.add_row(*row(state))
    console.print(table)
    backlogs, problem = _backlogs(cli.delivery_grpc, token) if states[3].health != "unreachable" else ([], "")
    near = near_retention(backlogs, warn_at)
    if problem:
        console.print(f"partner backlogs: not available ({problem})")
    elif near:
        console.print("[red]partners near their feed's retention[/red] (`imx partners lag` for all):")
        for b in near:
            console.print(
                f"  {b.partner_id}: {b.unread:,} unread, {b.retention_used:.0%} of retention used"
                + (f", {b.expired:,} expired unread" if b.expired else ""),
                highlight=False,
            )
    if any(state.failing for state in states):
        raise typer.Exit(1)

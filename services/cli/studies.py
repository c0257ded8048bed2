"""`imx studies status UID`: how far a study got for each partner (audit's Studies gRPC)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli.admin import _channel
from services.cli.settings import CliSettings
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

console = Console()
studies_app = typer.Typer(help="Studies: where each one is, for each partner.", no_args_is_help=True)


def _reasons(reasons: list[admin_pb2.StatusReason]) -> str:
    return ", ".join(f"{r.stage}: {r.reason} ({r.count})" for r in reasons)


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.1f}" if ms else ""


@studies_app.command("status")
def status(
    study_uid: Annotated[str, typer.Argument(help="StudyInstanceUID as sent, or as a partner received it")],
) -> None:
    """Per partner: the furthest state reached (received → routed → prepared → delivered → stored →
    complete, or quarantined / failed / dead_lettered), the counts behind it and the reasons."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = admin_pb2_grpc.StudiesStub(channel).StudyStatus(
            admin_pb2.StudyStatusRequest(study_instance_uid=study_uid), timeout=60
        )
    if not reply.found:
        console.print(f"nothing is known about study {study_uid}")
        raise typer.Exit(1)
    console.print(f"study {reply.study_instance_uid}: {reply.instances} instance(s) received")
    table = Table(
        "partner",
        "route",
        "state",
        "routed",
        "prepared",
        "delivered",
        "stored",
        "complete",
        "turnaround p50/max s",
        "reasons",
    )
    for p in reply.partners:
        complete = {"complete": "yes", "incomplete": f"no ({p.missing} missing)"}.get(p.completeness, "")
        turnaround = f"{_seconds(p.turnaround_ms_p50)}/{_seconds(p.turnaround_ms_max)}" if p.stored else ""
        table.add_row(
            p.partner_id,
            p.route_id,
            p.state,
            str(p.routed),
            str(p.prepared),
            str(p.delivered),
            str(p.stored),
            complete,
            turnaround,
            _reasons(list(p.reasons)),
        )
    console.print(table)
    if not reply.partners:
        console.print("routed to no partner")
    if reply.quarantined:
        console.print(f"quarantined: {_reasons(list(reply.quarantined))}")
    if reply.dead_letters:
        console.print(f"dead letters: {_reasons(list(reply.dead_letters))}")

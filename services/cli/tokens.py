"""`imx tokens add|list|remove`: who may call the services' gRPC control and admin APIs (audit's
ControlTokenAdmin; services/common/control_tokens.py). Administrators only; each change is recorded."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli.admin import _channel
from services.cli.settings import CliSettings
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

console = Console()
tokens_app = typer.Typer(
    help="Control tokens: who may call the services' gRPC APIs (operator or administrator).", no_args_is_help=True
)


class RoleName(StrEnum):
    operator = "operator"
    administrator = "administrator"


@tokens_app.command("add")
def tokens_add(
    name: str,
    role: Annotated[
        RoleName,
        typer.Option(
            help="operator: status, pause, resume, dead letters, partner lag, study status, the audit log's check; "
            "administrator: everything"
        ),
    ] = RoleName.operator,
) -> None:
    """Issue a control token (shown once; an earlier token of that name stops working)."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = admin_pb2_grpc.ControlTokenAdminStub(channel).AddControlToken(
            admin_pb2.AddControlTokenRequest(token=admin_pb2.ControlToken(name=name, role=role.value)), timeout=10
        )
    console.print(
        f"control token for {reply.token.name} ({reply.token.role}), shown once:\n  {reply.token_value}\n"
        "give it as IMX_CONTROL_TOKEN, in the file IMX_CONTROL_TOKEN_FILE names, or in ~/.config/imx/token",
        highlight=False,
    )


@tokens_app.command("list")
def tokens_list() -> None:
    """Show who holds a control token, and its role (never the token)."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = admin_pb2_grpc.ControlTokenAdminStub(channel).ListControlTokens(
            admin_pb2.ListControlTokensRequest(), timeout=10
        )
    table = Table("name", "role", "issued (UTC)")
    for t in reply.tokens:
        issued = dt.datetime.fromtimestamp(t.created_at_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(t.name, t.role, issued if t.created_at_ms else "-")
    console.print(table)


@tokens_app.command("remove")
def tokens_remove(name: str) -> None:
    """Withdraw a control token (refused by every service within seconds)."""
    with _channel(CliSettings().audit_grpc) as channel:
        admin_pb2_grpc.ControlTokenAdminStub(channel).RemoveControlToken(
            admin_pb2.RemoveControlTokenRequest(name=name), timeout=10
        )
    console.print(f"control token {name} removed")

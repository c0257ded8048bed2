"""`imx dlq list|show|replay|discard`: the dead-letter topic through audit's DeadLetterAdmin API.

Nothing here shows a dead letter's value or key (they may carry PHI): only where it came from, which
stage failed and how."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from services.cli.admin import INT32_MAX, _channel
from services.cli.settings import CliSettings
from services.common.dead_letter_limits import MAX_LIMIT
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

console = Console()
dlq_app = typer.Typer(
    help="Dead letters: inputs no stage could process (not quarantined, not retried). List, show, replay, discard.",
    no_args_is_help=True,
)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _stub(channel: grpc.Channel) -> admin_pb2_grpc.DeadLetterAdminStub:
    return admin_pb2_grpc.DeadLetterAdminStub(channel)


def _at(position: str) -> tuple[int, int]:
    """`<partition>:<offset>` in the dead-letter topic, as `imx dlq list` shows it."""
    partition, sep, offset = position.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise typer.BadParameter("expected <partition>:<offset>, e.g. 0:17")
    if int(partition) > INT32_MAX or int(offset) >= 2**63:
        raise typer.BadParameter("no such position: the partition or the offset is out of range")
    return int(partition), int(offset)


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="the newest N")] = 100,
    stage: Annotated[str, typer.Option(help="only this stage's")] = "",
) -> None:
    """The newest dead letters: where each came from, which stage failed, why, and whether it was replayed."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = _stub(channel).ListDeadLetters(admin_pb2.ListDeadLettersRequest(limit=limit, stage=stage))
    table = Table("at", "when", "stage", "failure", "error", "source", "replayed", "discarded")
    for d in reply.dead_letters:
        table.add_row(
            f"{d.partition}:{d.offset}",
            _when(d.timestamp_ms),
            d.stage,
            d.failure or "-",
            d.error or d.error_type,
            f"{d.source_topic} {d.source_partition}:{d.source_offset}",
            _when(d.replayed_at_ms),
            _when(d.discarded_at_ms),
        )
    console.print(table)


@dlq_app.command("show")
def dlq_show(position: Annotated[str, typer.Argument(help="<partition>:<offset> (from `imx dlq list`)")]) -> None:
    """One dead letter's details (never its content)."""
    partition, offset = _at(position)
    with _channel(CliSettings().audit_grpc) as channel:
        d = _stub(channel).GetDeadLetter(admin_pb2.GetDeadLetterRequest(partition=partition, offset=offset)).dead_letter
    for name, value in [
        ("at", f"{d.partition}:{d.offset}"),
        ("when", _when(d.timestamp_ms)),
        ("stage", d.stage),
        ("failure", d.failure or "-"),
        ("error type", d.error_type),
        ("error", d.error),
        ("source", f"{d.source_topic} partition {d.source_partition} offset {d.source_offset}"),
        ("size", f"{d.size} bytes"),
        ("headers", ", ".join(d.header_names) or "-"),
        ("replayed", _when(d.replayed_at_ms)),
        ("discarded", _when(d.discarded_at_ms)),
    ]:
        console.print(f"[bold]{name}[/bold]: {value}", highlight=False)


@dlq_app.command("replay")
def dlq_replay(
    position: Annotated[str, typer.Argument(help="<partition>:<offset> (from `imx dlq list`)")],
    force: Annotated[bool, typer.Option(help="replay one that was replayed or discarded before")] = False,
) -> None:
    """Send a dead letter back to the topic it came from (after fixing what made its stage fail)."""
    partition, offset = _at(position)
    with _channel(CliSettings().audit_grpc) as channel:
        reply = _stub(channel).ReplayDeadLetter(
            admin_pb2.ReplayDeadLetterRequest(partition=partition, offset=offset, force=force)
        )
    console.print(f"replayed {partition}:{offset} to {reply.topic}", highlight=False)


@dlq_app.command("discard")
def dlq_discard(
    position: Annotated[str, typer.Argument(help="<partition>:<offset> (from `imx dlq list`)")],
    force: Annotated[
        bool, typer.Option(help="discard one that was replayed (its replay may need its objects)")
    ] = False,
) -> None:
    """Give up on a dead letter: it is not replayed unless forced, and the stored objects it names are no
    longer kept for it (the blob lifecycle deletes them once nothing else needs them). The letter itself
    stays on the topic until its retention."""
    partition, offset = _at(position)
    with _channel(CliSettings().audit_grpc) as channel:
        reply = _stub(channel).DiscardDeadLetter(
            admin_pb2.DiscardDeadLetterRequest(partition=partition, offset=offset, force=force)
        )
    console.print(f"discarded {partition}:{offset} at {_when(reply.discarded_at_ms)}", highlight=False)

"""`imx audit verify|head`: the audit log's tamper evidence through audit's AuditLog gRPC API.

`verify` asks the audit service to recompute the Merkle log from the stored records and check every
signed tree head; `--remember FILE` keeps the tree head it verified and, next time, requires the log to
still extend it (what catches a truncation that also removed the later tree heads). Exit status 0 when
everything verifies, 1 when something was tampered with."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli.admin import _channel
from services.cli.settings import CliSettings
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

console = Console()
audit_app = typer.Typer(help="The audit log's tamper evidence: verify it, show its signed tree head.",
                        no_args_is_help=True)  # fmt: skip


VERIFY_DEADLINE_S = 3600.0  # it recomputes the whole log (`--wait-s`); the other calls get the CLI's 60 s
VERIFY_NOT_RUN = 3  # exit status: the service answered with an error (a refused token, a deadline)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _describe(head: admin_pb2.SignedTreeHead) -> str:
    return f"size {head.tree_size}, root {head.root_hash.hex()}, signed {_when(head.timestamp_ms)} UTC"


def _known(path: Path | None) -> tuple[int, bytes]:
    if path is None or not path.exists():
        return 0, b""
    try:
        saved = json.loads(path.read_text())
        return int(saved["tree_size"]), bytes.fromhex(saved["root_hash"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        console.print(
            f"[red]{path} does not hold a tree head `audit verify --remember` wrote[/red] "
            f"({type(error).__name__}); give another file, or remove it to start from this run's head"
        )
        raise typer.Exit(2) from None


@audit_app.command("verify")
def verify(
    remember: Annotated[
        Path | None,
        typer.Option(
            help="a file keeping the last verified tree head: the log must still extend it, and it is "
            "updated when verification passes"
        ),
    ] = None,
    max_findings: Annotated[int, typer.Option(min=1, max=2**32 - 1, help="list at most N findings")] = 100,
    skip_pages: Annotated[
        bool, typer.Option(help="check the records only, not the pages analysts read (each record's 2-3 copies)")
    ] = False,
    wait_s: Annotated[
        float,
        typer.Option(
            min=1,
            help="how long to wait for the answer (about 1 ms per record, twice that with the pages, on "
            "FerretDB/PostgreSQL)",
        ),
    ] = VERIFY_DEADLINE_S,
) -> None:
    """Recompute the log from the stored records: names each changed, deleted, reordered or truncated record
    (leaf index, record id), checks each signed tree head's signature and their consistency, then every
    copy of a record on the pages analysts read (trails, listings, exports) against the record. Exit
    status: 0 verified, 1 tampered, 2 a bad option or the service unreachable, 3 the check could not run."""
    known_size, known_root = _known(remember)
    # Exit 1 is TAMPERED: a check that could not run (a refused token, a deadline) must not look like it.
    with (
        _channel(CliSettings().audit_grpc, failed_exit=VERIFY_NOT_RUN) as channel,
        console.status("audit is recomputing the log from the stored records (a large one takes minutes)"),
    ):
        reply = admin_pb2_grpc.AuditLogStub(channel).VerifyAuditLog(
            admin_pb2.VerifyAuditLogRequest(
                known_tree_size=known_size,
                known_root_hash=known_root,
                max_findings=max_findings,
                skip_pages=skip_pages,
            ),
            timeout=wait_s,
        )
    console.print(
        f"{reply.leaves_checked} of {reply.tree_size} leaves checked"
        + (f" (leaves before {reply.purged_to} purged under a signed checkpoint)" if reply.purged_to else "")
        + f", {reply.tree_heads_checked} tree head(s) reproduced"
        + ("" if skip_pages else f", {reply.page_copies_checked} page copies checked")
        + f", in {reply.elapsed_ms / 1000:.1f} s"
    )
    console.print(f"signing key sha256:{reply.key_fingerprint}")
    if reply.HasField("latest"):
        console.print(f"latest signed tree head: {_describe(reply.latest)}")
    if reply.ok:
        pages = "" if skip_pages else "; no page differs from its records"
        console.print(f"[green]verified[/green]: no record was changed, deleted, reordered or truncated{pages}")
        if remember is not None and reply.HasField("latest"):
            remember.parent.mkdir(parents=True, exist_ok=True)
            remember.write_text(json.dumps({"tree_size": reply.latest.tree_size,
                                            "root_hash": reply.latest.root_hash.hex()}) + "\n")  # fmt: skip
        return
    table = Table("finding", "leaf", "record", "detail")
    for f in reply.findings:
        table.add_row(f.kind, str(f.leaf_index) if f.leaf_index >= 0 else "-", f.record_id or "-", f.detail)
    console.print(table)
    more = reply.findings_total - len(reply.findings)
    console.print(f"[red]TAMPERED[/red]: {reply.findings_total} finding(s)" + (f", {more} not listed" if more else ""))
    raise typer.Exit(1)


@audit_app.command("head")
def head() -> None:
    """The latest signed tree head (keep it somewhere else: a later verify can be asked to extend it)."""
    with _channel(CliSettings().audit_grpc) as channel:
        reply = admin_pb2_grpc.AuditLogStub(channel).GetTreeHead(admin_pb2.GetTreeHeadRequest(), timeout=30)
    console.print(f"{reply.tree_size} leaves appended; public key {reply.public_key.hex()}")
    if not reply.found:
        console.print("no tree head signed yet")
        raise typer.Exit(1)
    console.print(f"signed tree head: {_describe(reply.head)}")
    console.print(f"signature {reply.head.signature.hex()}")

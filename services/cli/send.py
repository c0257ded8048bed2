"""`imx send PATH... --from ORG [--to PARTNER]`: files and folders into the exchange, in process,
through exactly the acceptance path C-STORE and STOW-RS use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.cli.files import say_left_out
from services.ingest.sender import SendSummary

console = Console()


def send(
    paths: Annotated[
        list[Path],
        # readable=False: Typer's own check printed an unreadable path whole (file names carry patients' names)
        typer.Argument(help="DICOM files and folders (folders are searched recursively)", readable=False),
    ],
    from_org: Annotated[str, typer.Option("--from", help="the sending organisation (must be registered)")],
    to: Annotated[str, typer.Option(help="ask for this destination partner explicitly")] = "",
) -> None:
    """Send DICOM files with a progress bar and a summary; re-sending is safe (duplicates are recognised)."""
    from services.common.messages import PhiSafeError
    from services.ingest.sender import SendAborted, SendProgress, send_with_settings

    # The bar moves with the bytes (files differ in size); the files are counted beside it.
    columns = (
        TextColumn("sending"),
        BarColumn(),
        TextColumn("{task.fields[files]}"),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("sending", total=None, files="")

        def progress(p: SendProgress) -> None:
            bar.update(task, completed=p.bytes_done, total=p.bytes_total, files=f"{p.done}/{p.total} files")

        try:
            summary = send_with_settings(paths, source_org=from_org, to=to or None, progress=progress)
        except SendAborted as aborted:
            console.print(f"[red]{aborted}[/red]; sending again is safe (accepted files come back as duplicates)")
            summary = aborted.summary
            _print(summary)
            raise typer.Exit(1) from None
        except PhiSafeError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
    _print(summary)
    if not summary.sent:
        console.print("[red]no files found under the paths given[/red] (a share not mounted?)")
    if not summary.all_sent:  # a script must not read "some were left out" as success
        raise typer.Exit(1)


def _print(summary: SendSummary) -> None:
    table = Table("outcome", "files")
    table.add_row("sent", str(summary.sent))
    table.add_row("accepted", str(summary.accepted))
    table.add_row("duplicates (already received)", str(summary.duplicates))
    for reason, count in sorted(summary.rejected.items()):
        table.add_row(f"rejected: {reason}", str(count))
    console.print(table)
    say_left_out(summary)

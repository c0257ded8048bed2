"""`imx blobs usage|gc|verify`: the blob store's size, deleting what no partner is owed any more, and
rehashing every object (the pipeline hashes each object once, when it is written, and its reads check
only the size the event carries: `verify` is the scrub that finds bit rot).

They read the blob store and MongoDB directly (IMX_BLOB_DIR, IMX_MONGO_URI, IMX_MONGO_DB), as
`imx send` does, and the pipeline's dead-letter topic (IMX_KAFKA_BOOTSTRAP and IMX_KAFKA_*: a user that
may read it, audit's or delivery's; the objects its letters name are kept); the delivery service runs
the same collection on a timer (IMX_BLOB_GC_INTERVAL_S).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.common.blob_lifecycle import (
    STALE_TEMPORARY_S,
    BlobEntry,
    collect,
    scan,
    usage,
)
from services.common.blob_store import LocalBlobStore

console = Console()
blobs_app = typer.Typer(
    help="The blob store: usage, collecting objects no partner is owed, and verifying every object's hash.",
    no_args_is_help=True,
)

RetentionDays = Annotated[
    float | None,
    typer.Option(
        help="keep objects this many days after they were last written, at least one (an instance in the "
        "pipeline is kept by its age alone); default: delivery's own, IMX_BLOB_RETENTION_S "
        "(IMX_DELIVERY_BLOB_RETENTION_S), seven days unless set",
        min=1.0,
        show_default=False,
    ),
]


def _retention_s(days: float | None) -> float:
    """The days given, else the retention delivery runs with (a hard-wired seven days deleted objects a
    deployment keeping thirty still wanted): its variable read as delivery reads it, and only that one."""
    from pydantic import AliasChoices, TypeAdapter, ValidationError

    from services.common.blob_lifecycle import MIN_RETENTION_S
    from services.delivery.settings import DeliverySettings

    if days is not None:
        return days * 86400
    field = DeliverySettings.model_fields["blob_retention_s"]  # its names and default, as delivery has them
    assert isinstance(field.validation_alias, AliasChoices)
    for name in field.validation_alias.choices:
        if isinstance(name, str) and (text := os.environ.get(name)) is not None:
            try:
                seconds = TypeAdapter(float).validate_python(text)
            except ValidationError:
                seconds = 0.0
            if not seconds >= MIN_RETENTION_S:  # delivery refuses it too
                console.print(f"[red]{name} is not a number of seconds of at least a day[/red]: give --retention-days")
                raise typer.Exit(2)
            return seconds
    return float(field.default)


def _store_root() -> Path:
    """IMX_BLOB_DIR, which must be a blob store: a mistyped one was made empty, and "all 0 objects match"."""
    from services.common.settings import ServiceSettings

    root = ServiceSettings().blob_dir
    if not root.is_dir():
        console.print(f"[red]no blob store at {root}[/red]: set IMX_BLOB_DIR to the services' blob folder")
        raise typer.Exit(2)
    return root


def _owed() -> set[str]:
    """What partners are still owed and what the pipeline's dead letters name; without either nothing
    can be judged, so an unreachable database or broker ends the command (it never deletes on a guess)."""
    from pymongo.errors import PyMongoError

    from services.common.dead_letter_topic import IncompleteRead
    from services.common.mongo import connect
    from services.common.settings import ServiceSettings
    from services.delivery.delivered import DeliveredObjects
    from services.delivery.owed_blobs import OwedBlobs

    settings = ServiceSettings()
    try:
        client, db = connect(settings)
    except (ValueError, PyMongoError) as error:  # a URI that does not parse (its text may hold a password)
        console.print(f"[red]IMX_MONGO_URI is not a usable MongoDB URI[/red] ({type(error).__name__})")
        raise typer.Exit(2) from None
    try:
        # An operator's run puts right every delivery an earlier release wrote, however recent (a scan).
        owed = OwedBlobs.of(settings, DeliveredObjects(db, flag_sweep_s=0), db)
    except (ValueError, OSError) as error:  # a sign-in without a user, a password file that is not there
        client.close()
        console.print(f"[red]the Kafka sign-in in IMX_KAFKA_* cannot be used[/red]: {error}")
        raise typer.Exit(2) from None
    try:
        return owed()
    except PyMongoError as error:
        console.print(
            f"[red]cannot read what partners are owed[/red] ({type(error).__name__}): "
            "is the MongoDB server at IMX_MONGO_URI running?"
        )
        raise typer.Exit(1) from None
    except IncompleteRead as error:
        console.print(
            f"[red]cannot read the pipeline's dead letters[/red] ({error}): is the broker at "
            "IMX_KAFKA_BOOTSTRAP running, and may the user in IMX_KAFKA_SASL_USERNAME read its dead-letter topic?"
        )
        raise typer.Exit(1) from None
    finally:
        client.close()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


@blobs_app.command("usage")
def blobs_usage(retention_days: RetentionDays = None) -> None:
    """How many objects the store holds and the bytes they take on disk, how many are past the
    retention and how many a partner is still owed. A spliced object counts its record (its head and a
    reference), the bytes it shares with its source once, in the source."""

    root = _store_root()
    retention_s = _retention_s(retention_days)
    entries: list[BlobEntry] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("scanning")
        for entry in scan(root):
            entries.append(entry)
            if len(entries) % 1000 == 0:
                bar.update(task, description=f"scanning: {len(entries):,} objects")
    with console.status("reading the dead letters and what partners are still owed"):
        owed = _owed()
    result = usage(entries, owed, time.time(), retention_s)
    spliced = [entry for entry in entries if entry.source]
    table = Table(
        "",
        "objects",
        "on disk",
        title=f"blob store {root}",
        caption="on disk: a spliced object is its record; bytes shared with its source count once, in the source",
    )
    table.add_row("all", f"{result.objects:,}", _size(result.bytes))
    table.add_row("  of which spliced (records)", f"{len(spliced):,}", _size(sum(entry.size for entry in spliced)))
    table.add_row(
        f"older than {retention_s / 86400:g} days", f"{result.expired_objects:,}", _size(result.expired_bytes)
    )
    table.add_row(
        "owed to a partner (not stored yet) or named by a dead letter",
        f"{result.owed_objects:,}",
        _size(result.owed_bytes),
    )
    console.print(table)


@blobs_app.command("gc")
def blobs_gc(
    retention_days: RetentionDays = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would go, delete nothing")] = False,
) -> None:
    """Delete objects older than the retention that no partner is owed (never one a partner's
    gateway has not reported stored, one a pipeline dead letter not discarded names, nor the source of a spliced
    object that is kept), and the temporary files writers that stopped left behind."""

    root = _store_root()
    seen = 0
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("scanning")

        def progress(_entry: BlobEntry) -> None:
            nonlocal seen
            seen += 1
            if seen % 1000 == 0:
                bar.update(task, description=f"scanning: {seen:,} objects")

        result = collect(root, _owed, _retention_s(retention_days), dry_run=dry_run, on_entry=progress)
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {result.deleted:,} objects ({_size(result.freed_bytes)} on disk) of {seen:,}; "
        f"kept {result.kept_owed:,} past the retention that a partner is still owed or a dead letter names "
        f"and {result.kept_sources:,} that a kept spliced object refers to"
    )
    if result.temporaries:
        console.print(
            f"{verb} {result.temporaries:,} temporary files ({_size(result.temporary_bytes)}) left by writers "
            f"that stopped (none written for {STALE_TEMPORARY_S // 60:,} minutes)"
        )


@blobs_app.command("verify")
def blobs_verify() -> None:
    """Rehash every object and name those that no longer match their SHA-256 (exit status 1 if any).
    Reads the whole store once: a spliced object's head and its source's range, so the bar counts
    those bytes, not its record's. An object stored both whole and spliced is checked in each form."""

    root = _store_root()
    store = LocalBlobStore(root)
    entries = list(scan(root))
    total = sum(entry.logical_size for entry in entries)
    forms = Counter(entry.sha256 for entry in entries)
    corrupt: list[tuple[str, str]] = []  # (sha256, the form when the object has two)
    columns = (TextColumn("verifying"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("verifying", total=total)
        for entry in entries:
            try:
                sound = store.verify(entry.sha256, spliced=bool(entry.source))
            except FileNotFoundError:  # collected since the scan
                sound = True
            if not sound:
                # By its name only (never anything read from the object), and its form when it has two.
                form = (" (spliced)" if entry.source else " (whole)") if forms[entry.sha256] > 1 else ""
                corrupt.append((entry.sha256, form))
            bar.advance(task, entry.logical_size)
    objects = f"{len(forms):,} objects ({_size(total)} read"
    if len(entries) > len(forms):
        objects += f"; {len(entries) - len(forms):,} stored both whole and spliced, each checked"
    if not corrupt:
        console.print(f"all {objects}) match their hashes")
        return
    console.print(f"[red]{len({sha256 for sha256, _ in corrupt}):,} of {objects}) do not match their hashes:[/red]")
    for sha256, form in corrupt:
        console.print(f"  {sha256}{form}")
    raise typer.Exit(1)

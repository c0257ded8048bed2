"""`imx profiles list|show|add|remove|preview`: a thin client of deid's ProfileAdmin gRPC service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.cli.admin import _channel
from services.cli.settings import CliSettings
from services.proto_gen.imx.v1 import profiles_pb2, profiles_pb2_grpc

console = Console()
notes = Console(stderr=True)
profiles_app = typer.Typer(
    help="De-identification profiles: Basic Profile + options + per-tag overrides + pixel rules.",
    no_args_is_help=True,
)


def _stub(channel: Any) -> profiles_pb2_grpc.ProfileAdminStub:
    return profiles_pb2_grpc.ProfileAdminStub(channel)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(2)


def profile_document(msg: profiles_pb2.DeidProfile) -> dict[str, Any]:
    """The JSON form `add --from-file` reads back."""
    from services.deid.admin import document_from_proto

    return {**document_from_proto(msg), "version": msg.version}


def build_document(name: str, from_file: Path | None, options: list[str], overrides: list[str]) -> dict[str, Any]:
    """The file (if any), renamed to NAME, with the command line's options and overrides on top."""
    doc: dict[str, Any] = {}
    if from_file is not None:
        try:
            loaded = json.loads(from_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read {from_file}: {exc}") from None
        except RecursionError:  # json's parser recurses per level
            raise _fail(f"cannot read {from_file}: nested too deeply") from None
        if not isinstance(loaded, dict):
            raise _fail(f"{from_file} must hold one JSON object")
        doc = loaded
    doc.pop("version", None)  # the server numbers versions
    doc["name"] = name
    doc["options"] = [*(doc.get("options") or []), *options]
    merged = dict(doc.get("overrides") or {})
    for text in overrides:
        tag, sep, action = text.rpartition("=")
        if not sep or not tag.strip() or not action.strip():
            raise _fail(f'bad --override {text!r}: expected TAG=ACTION, e.g. "(0010,0010)=K"')
        merged[tag.strip()] = action.strip()
    doc["overrides"] = merged
    return doc


@profiles_app.command("list")
def profiles_list() -> None:
    """Show every profile (current versions)."""
    with _channel(CliSettings().deid_grpc) as channel:
        reply = _stub(channel).ListProfiles(profiles_pb2.ListProfilesRequest())
    table = Table("name", "version", "options", "overrides", "pixel rules", "built-in")
    for p in reply.profiles:
        overrides = ", ".join(f"{tag}={action}" for tag, action in sorted(p.overrides.items()))
        table.add_row(
            p.name,
            str(p.version),
            "\n".join(p.options) or "-",
            overrides or "-",
            str(len(p.pixel_rules)),
            "yes" if p.builtin else "",
        )
    console.print(table)


@profiles_app.command("show")
def profiles_show(
    name: str,
    version: Annotated[int, typer.Option(help="an earlier version (default: the current one)")] = 0,
) -> None:
    """Print a profile as JSON (the form `add --from-file` reads)."""
    with _channel(CliSettings().deid_grpc) as channel:
        reply = _stub(channel).GetProfile(profiles_pb2.GetProfileRequest(name=name, version=version))
    print(json.dumps(profile_document(reply.profile), indent=2))
    kind = "built-in, " if reply.profile.builtin else ""
    notes.print(f"{kind}versions: {', '.join(map(str, reply.versions))}")


@profiles_app.command("add")
def profiles_add(
    name: str,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="a PS3.15 option, e.g. retain-patient-characteristics")
    ] = None,
    override: Annotated[
        list[str] | None, typer.Option("--override", help='TAG=ACTION for one exact tag, e.g. "(0008,103E)=K"')
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="a JSON profile (see `imx profiles show`)", exists=True)
    ] = None,
) -> None:
    """Add or replace a profile; each change is a new version, earlier versions stay readable."""
    from services.deid.admin import profile_to_proto
    from services.deid.profile_documents import profile_from_document

    try:
        profile = profile_from_document(build_document(name, from_file, option or [], override or []))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except RecursionError:
        raise _fail("the profile is nested too deeply") from None
    with _channel(CliSettings().deid_grpc) as channel:
        reply = _stub(channel).AddProfile(profiles_pb2.AddProfileRequest(profile=profile_to_proto(profile)))
    if reply.changed:
        console.print(f"profile {reply.profile.name} saved (version {reply.profile.version})")
    else:
        console.print(f"profile {reply.profile.name} unchanged (version {reply.profile.version})")


@profiles_app.command("remove")
def profiles_remove(name: str) -> None:
    """Remove a profile (its versions stay for audit); instances routed to it are then quarantined."""
    with _channel(CliSettings().deid_grpc) as channel:
        _stub(channel).RemoveProfile(profiles_pb2.RemoveProfileRequest(name=name))
    console.print(f"profile {name} removed")


@profiles_app.command("preview")
def profiles_preview(
    name: str,
    # readable=False: read_input_file checks it, naming no path (Typer's own check printed it whole)
    file: Annotated[Path, typer.Argument(help="one DICOM Part 10 file", readable=False)],
    partner: Annotated[
        str, typer.Option("--partner", help="use this partner's pseudonyms (default: a random key)")
    ] = "",
    version: Annotated[int, typer.Option(help="an earlier version of the profile")] = 0,
) -> None:
    """Show what the profile does to FILE, attribute by attribute (real values: authorised eyes only)."""
    from services.cli.files import read_input_file

    request = profiles_pb2.PreviewRequest(
        profile=name, version=version, partner_id=partner, dicom=read_input_file(file)
    )
    with _channel(CliSettings().deid_grpc) as channel:
        reply = _stub(channel).Preview(request)
    if reply.refused_reason:
        console.print(
            f"[red]the stage would quarantine this instance[/red]: {reply.refused_reason} {reply.refused_detail}"
        )
        raise typer.Exit(1)
    table = Table(title=f"{reply.profile} v{reply.profile_version}")
    for column in ("attribute", "keyword", "action", "before", "after"):
        table.add_column(column, overflow="fold")  # whole UIDs and values, wrapped, never cut
    for change in reply.changes:
        where = f"{change.path}/{change.tag}" if change.path else change.tag
        table.add_row(where, change.keyword, change.action, change.before, change.after)
    console.print(table)
    notes.print(f"{len(reply.changes)} attributes changed; the values shown are real: do not copy them anywhere")

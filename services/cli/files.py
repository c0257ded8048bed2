"""`imx demo-data` and `imx deid`: commands that work on files."""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from services.deid.engine import Profile

console = Console()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )


def dicom_files(paths: list[Path]) -> list[Path]:
    """The files `imx send` would send (ingest's walk), hidden files skipped."""
    from services.ingest.sender import PathNotFound, find_files

    try:
        return [p for p in find_files(paths) if not p.name.startswith(".")]
    except PathNotFound as missing:  # the message names the path's position, not the path (PHI in folder names)
        console.print(f"[red]{missing}[/red]")
        raise typer.Exit(2) from None


def demo_data(
    out: Annotated[Path, typer.Option(help="folder to write the studies into")],
    studies: Annotated[int, typer.Option(min=1, help="how many studies (a CT/MR/CR/DX mix)")] = 10,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
) -> None:
    """Write a deterministic synthetic data set with realistic (fake) PHI in the usual places."""
    from services.common.dicom.synthetic import write_demo_data

    with progress_bar() as bar:
        task = bar.add_task("writing studies", total=studies)
        manifest = write_demo_data(out, studies, seed, progress=lambda n: bar.update(task, completed=n))
    manifest_path = out.parent / f"{out.name}.manifest.json"
    manifest_path.write_text(manifest.to_json())
    console.print(
        f"{len(manifest.files)} instances in {studies} studies, {manifest.total_bytes / 1e6:.1f} MB, under {out}; "
        f"planted PHI listed in {manifest_path}"
    )


def _load_key(key_file: Path) -> bytes:
    if key_file.exists():
        try:
            key = bytes.fromhex(key_file.read_text().strip())
        except ValueError:
            key = b""
        if len(key) < 16:
            console.print(f"[red]{key_file} must hold at least 16 bytes as hex[/red]")
            raise typer.Exit(2)
        return key
    key = secrets.token_bytes(32)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    console.print(f"new recipient key written to {key_file} (keep it: the same key gives the same pseudonyms)")
    return key


def _profile(name_or_file: str) -> Profile:
    """A built-in profile by name, or a profile document (JSON) from a file."""
    from services.deid.engine import BUILTIN_PROFILES
    from services.deid.profile_documents import profile_from_document

    if name_or_file in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        console.print(
            f"[red]unknown profile {name_or_file!r}[/red]: built-in are {', '.join(sorted(BUILTIN_PROFILES))}, "
            "or give a JSON profile file"
        )
        raise typer.Exit(2)
    try:
        return profile_from_document(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:  # json and the document checks raise ValueError with a reason
        console.print(f"[red]bad profile file {path}[/red]: {error}")
        raise typer.Exit(2) from None


def deid(
    source: Annotated[Path, typer.Argument(help="a DICOM file or a folder of them")],
    target: Annotated[Path, typer.Argument(help="output file, or folder (mirrors the input tree)")],
    profile: Annotated[
        str,
        typer.Option(help="built-in profile (basic, research) or a JSON profile file, as `imx profiles add` takes"),
    ] = "basic",
    key_file: Annotated[Path, typer.Option(help="recipient's secret key (hex); created if missing")] = Path(
        "imx-recipient.key"
    ),
) -> None:
    """De-identify files with exactly the code the deid service runs (no server needed)."""
    from services.common.blob_store import sha256_hex
    from services.deid.engine import DeidError
    from services.deid.files import deidentify_file
    from services.deid.handler import refusal_for

    if target.exists() and target.resolve() == source.resolve():
        console.print("[red]the output would overwrite the originals[/red]: give another file or folder")
        raise typer.Exit(2)
    chosen = _profile(profile)
    key = _load_key(key_file)
    files = dicom_files([source])
    outcomes: Counter[str] = Counter()
    with progress_bar() as bar:
        task = bar.add_task("de-identifying", total=len(files))
        for path in files:
            if source.is_dir():
                out = target / path.relative_to(source)
            else:
                out = target / path.name if target.is_dir() else target
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                deidentify_file(path, out, chosen, key)
            except DeidError as error:
                refusal = refusal_for(error)
                outcomes[f"refused: {refusal.reason}"] += 1
                # The file name may itself carry PHI, so it is referred to by its content hash.
                console.print(f"refused {sha256_hex(path.read_bytes())[:12]}: {refusal.reason} {refusal.detail}")
            else:
                outcomes["de-identified"] += 1
            bar.advance(task)
    console.print(", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())))
    if any(k.startswith("refused") for k in outcomes):
        raise typer.Exit(1)

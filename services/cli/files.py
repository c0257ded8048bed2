"""`imx demo-data` and `imx deid`: commands that work on files."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from services.common.dicom.header import InvalidInstance
    from services.deid.engine import Profile
    from services.ingest.sender import FoundFiles

console = Console()
# `imx demo-data` stops before a study when less than this is left where it writes (a CT study is ~21 MB):
# asking for too many studies fills no disk.
DEMO_KEEP_FREE_BYTES = 1 << 30


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )


def read_input_file(path: Path) -> bytes:
    """One file the user named, read whole; one it cannot is said without its path (folder names of
    exported studies carry patients' names), and a folder is refused."""
    try:
        if path.is_dir():
            console.print("[red]give a file, not a folder[/red]")
            raise typer.Exit(2)
        return path.read_bytes()
    except OSError as error:
        console.print(f"[red]the file cannot be read[/red]: {error.strerror}")
        raise typer.Exit(2) from None


def dicom_files(paths: list[Path]) -> FoundFiles:
    """The files `imx send` would send (ingest's walk: hidden files and folders skipped), and what the walk
    left out, which is said, not skipped in silence."""
    from services.common.messages import PhiSafeError
    from services.ingest.sender import walk_inputs

    try:
        found = walk_inputs(paths)
    except PhiSafeError as missing:  # it names the path's position, not the path (PHI in folder names)
        console.print(f"[red]{missing}[/red]")
        raise typer.Exit(2) from None
    say_left_out(found)
    return found


class LeftOut(Protocol):
    """What a walk of the input left out (ingest's FoundFiles, and the SendSummary that carries it)."""

    @property
    def broken_links(self) -> int: ...
    @property
    def unreadable(self) -> int: ...
    @property
    def links_outside(self) -> int: ...
    @property
    def dicomdirs(self) -> int: ...


def say_left_out(walked: LeftOut) -> None:
    """What the walk of the input left out, each kind said (none in silence): `imx send` and `imx deid`."""
    warnings = (
        (walked.broken_links, "links under the input whose files are gone"),
        (walked.unreadable, "entries under the input that cannot be read"),
        (walked.links_outside, "links to folders outside the input, not followed"),
    )
    for count, what in warnings:
        if count:
            console.print(f"[yellow]{what}: {count} (skipped)[/yellow]")
    if walked.dicomdirs:
        console.print(f"DICOMDIR files skipped (a CD's index of its files, not an instance): {walked.dicomdirs}")


def demo_data(
    out: Annotated[Path, typer.Option(help="folder to write the studies into")],
    studies: Annotated[int, typer.Option(min=1, help="how many studies (a CT/MR/CR/DX mix)")] = 10,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
) -> None:
    """Write a deterministic synthetic data set with realistic (fake) PHI in the usual places."""
    from services.common.dicom.synthetic import write_demo_data

    if out.exists() and not out.is_dir():
        console.print(f"[red]{out} is a file[/red]: --out names the folder to write the studies into")
        raise typer.Exit(2)

    manifest_path = out.parent / f"{out.name}.manifest.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with progress_bar() as bar:
            task = bar.add_task("writing studies", total=studies)
            manifest = write_demo_data(
                out,
                studies,
                seed,
                progress=lambda n: bar.update(task, completed=n),
                stop_before=lambda: shutil.disk_usage(out).free < DEMO_KEEP_FREE_BYTES,
            )
        manifest_path.write_text(manifest.to_json())
    except OSError as error:  # a folder that cannot be made or written: said, not a traceback
        console.print(f"[red]cannot write under {out}[/red]: {error.strerror}")
        raise typer.Exit(2) from None
    written = len(manifest.studies)
    console.print(
        f"{len(manifest.files)} instances in {written} studies, {manifest.total_bytes / 1e6:.1f} MB, under {out}; "
        f"planted PHI listed in {manifest_path}"
    )
    if written < studies:
        console.print(
            f"[red]stopped after {written} of {studies} studies[/red]: less than "
            f"{DEMO_KEEP_FREE_BYTES >> 30} GiB left on the disk of --out"
        )
        raise typer.Exit(1)


def _load_key(key_file: Path) -> bytes:
    if key_file.exists():
        try:
            key = bytes.fromhex(key_file.read_text().strip())
        except ValueError:
            key = b""
        except OSError as error:
            console.print(f"[red]cannot read the key file {key_file}[/red]: {error.strerror}")
            raise typer.Exit(2) from None
        if len(key) < 16:
            console.print(f"[red]{key_file} must hold at least 16 bytes as hex[/red]")
            raise typer.Exit(2)
        return key
    key = secrets.token_bytes(32)
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
    except OSError as error:  # e.g. a read-only current folder, where the default key file goes
        console.print(f"[red]cannot write the key file {key_file}[/red]: {error.strerror}; give --key-file")
        raise typer.Exit(2) from None
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
    except RecursionError:  # json's parser recurses per level
        console.print(f"[red]bad profile file {path}[/red]: nested too deeply")
        raise typer.Exit(2) from None


def deid(
    source: Annotated[Path, typer.Argument(help="a DICOM file or a folder of them", readable=False)],
    target_text: Annotated[
        str,
        typer.Argument(
            metavar="TARGET", help="output file, or folder (mirrors the input tree; a name ending in / is a folder)"
        ),
    ],
    profile: Annotated[
        str,
        typer.Option(help="built-in profile (basic, research) or a JSON profile file, as `imx profiles add` takes"),
    ] = "basic",
    key_file: Annotated[Path, typer.Option(help="recipient's secret key (hex); created if missing")] = Path(
        "imx-recipient.key"
    ),
) -> None:
    """De-identify files with exactly the code the deid service runs (no server needed)."""
    from services.deid.engine import DeidError
    from services.deid.files import deidentify_file
    from services.deid.handler import refusal_for
    from services.ingest.sender import anything_left_out

    target = Path(target_text)
    try:
        into_folder = target_text.endswith(("/", os.sep)) or target.is_dir()  # Path drops a trailing "/"
        if target.exists() and target.resolve() == source.resolve():
            console.print("[red]the output would overwrite the originals[/red]: give another file or folder")
            raise typer.Exit(2)
        if source.is_dir() and target.exists() and not target.is_dir():
            console.print("[red]the input is a folder, so the output must be a folder too[/red]")
            raise typer.Exit(2)
    except OSError as error:  # a folder above them may be listed, not entered; its name may be a patient's
        console.print(f"[red]the input or the output cannot be read[/red]: {error.strerror}")
        raise typer.Exit(2) from None
    chosen = _profile(profile)
    walked = dicom_files([source])
    files = walked.files
    if not files:
        console.print("[red]no files to de-identify under the input[/red]")
        raise typer.Exit(1)
    key = _load_key(key_file)
    outcomes: Counter[str] = Counter()
    with progress_bar() as bar:
        task = bar.add_task("de-identifying", total=len(files))
        for path in files:
            if source.is_dir():
                out = target / path.relative_to(source)
            else:
                out = target / path.name if into_folder else target
            try:
                invalid = _refused_by_ingest(path)
                if invalid is not None:
                    outcomes[_refused(path, invalid.reason, invalid.detail)] += 1
                elif out.exists() and os.path.samefile(out, path):
                    # A folder given as the output that is the input's own: the copy would replace it.
                    console.print("[red]the output would overwrite the originals[/red]: give another file or folder")
                    raise typer.Exit(2)
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    deidentify_file(path, out, chosen, key)
                    outcomes["de-identified"] += 1
            except DeidError as error:
                refusal = refusal_for(error)
                outcomes[_refused(path, refusal.reason, refusal.detail)] += 1
            except OSError as error:  # its message would name the file, and folder names carry PHI
                console.print(f"[red]stopped: a file could not be read or written ({error.strerror})[/red]")
                console.print(", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())))
                raise typer.Exit(2) from None
            bar.advance(task)
    console.print(", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())))
    if any(k.startswith("refused") for k in outcomes) or anything_left_out(walked):
        raise typer.Exit(1)


def _refused_by_ingest(path: Path) -> InvalidInstance | None:
    """What ingest would refuse the file for, or None. The service only ever de-identifies what ingest
    accepted; without this check a header cut short came out as a stub without pixels, "de-identified"."""
    from services.common.dicom.header import InvalidInstance, inspect_instance

    data = path.read_bytes()
    try:
        inspect_instance(data, max_bytes=len(data))  # no size limit here: the file is the user's own
    except InvalidInstance as invalid:
        return invalid
    return None


def _refused(path: Path, reason: str, detail: str) -> str:
    """Say so, naming the file by its content hash (its name may carry PHI); the outcome to count."""
    from services.common.blob_store import sha256_hex

    console.print(f"refused {sha256_hex(path.read_bytes())[:12]}: {reason} {detail}".rstrip())
    return f"refused: {reason}"

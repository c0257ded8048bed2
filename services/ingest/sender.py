"""`imx send PATH... --from ORG [--to PARTNER]`: files and folders through the acceptance core,
in process, exactly as C-STORE and STOW-RS instances go (channel "cli")."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pymongo.errors import PyMongoError

from services.common.messages import PhiSafeError
from services.ingest.acceptance import Acceptance, AcceptanceResult, Accepted, Channel, Duplicate, check_destination
from services.ingest.errors import EventRefused, IngestUnavailable, UnknownOrganisation
from services.ingest.settings import IngestSettings
from services.ingest.wiring import StoppedBeforeStart, open_ingest

CHANNEL: Channel = "cli"
UNREADABLE = "unreadable"  # the file could not be read: nothing reached the exchange
# Its instance was stored, but the broker refused its event (larger than the ingested topic takes): sending
# it again once an operator raised the topic's limit gets it through.
REFUSED_BY_BROKER = "refused-by-broker"
BROKER_WAIT_S = 30.0  # a broker that is restarting is back well within this; a wrong sign-in never is


class PathNotFound(PhiSafeError, FileNotFoundError):
    """A path given to send does not exist (the path itself is in `.path`, not in the message:
    folder names of exported studies often carry a patient's name)."""

    def __init__(self, index: int, total: int, path: Path) -> None:
        super().__init__(f"path {index + 1} of {total} does not exist")
        self.path = path


class PathUnreadable(PhiSafeError, PermissionError):
    """A path given whose kind cannot be read (a folder above it may be listed, not entered); named by its
    position, as `PathNotFound`."""

    def __init__(self, index: int, total: int, path: Path, reason: str | None) -> None:
        super().__init__(f"path {index + 1} of {total} cannot be read ({reason or 'permission denied'})")
        self.path = path


@dataclass
class SendSummary:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    broken_links: int = 0  # links in the folders whose targets are gone (not sent, not counted in `sent`)
    unreadable: int = 0  # entries in the folders whose kind could not be read, or folders not listed (not sent)
    dicomdirs: int = 0  # DICOMDIR files in the folders (not sent)
    links_outside: int = 0  # links to folders outside the folder given (not followed)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def all_sent(self) -> bool:
        """Something was found, every file was taken, and nothing under the folders was left out."""
        return bool(self.sent) and not (self.rejected_total or anything_left_out(self))

    def add(self, result: AcceptanceResult) -> None:
        self.sent += 1
        if isinstance(result, Accepted):
            self.accepted += 1
        elif isinstance(result, Duplicate):
            self.duplicates += 1
        else:
            self.rejected[result.reason] += 1


class SendAborted(IngestUnavailable):
    """A dependency failed mid-way; `summary` says what was sent before. Sending again is safe:
    what was accepted comes back as duplicates."""

    def __init__(self, message: str, summary: SendSummary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class SendProgress:
    done: int
    total: int
    bytes_done: int
    bytes_total: int
    outcome: str  # "accepted" | "duplicate" | a rejection reason


ProgressCallback = Callable[[SendProgress], None]


class KnownOrganisations(Protocol):
    def exists(self, org_id: str) -> bool: ...


# A CD's or DVD's index (PS3.10 8.6): the patients' names and IDs, not an instance; ingest refuses it.
DICOMDIR = "DICOMDIR"


@dataclass
class _Walked:
    unreadable_folders: int = 0
    dicomdirs: int = 0
    links_outside: int = 0


def _walk(root: Path, walked: _Walked) -> Iterator[Path]:
    """Every entry under `root` but hidden ones (a name starting with "."): a folder's `.git`, `.Trash`,
    macOS's `.DS_Store` and `._*` files are not instances; and but DICOMDIR files. Links to folders are
    followed (PACS exports and mounted shares use them) if they stay inside `root`, each folder once, so a
    link loop cannot trap the walk (one leaving it, `up -> ..` or `-> /`, sent other patients' studies, or
    walked the whole machine: counted, not followed); a folder that cannot be listed is counted (it was
    left out without a word)."""
    inside = os.path.realpath(root)
    seen = {_folder_id(root)}

    def unlisted(_error: OSError) -> None:
        walked.unreadable_folders += 1

    for folder, dirs, names in os.walk(root, onerror=unlisted, followlinks=True):
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            path = os.path.join(folder, name)
            if os.path.islink(path) and os.path.commonpath((inside, os.path.realpath(path))) != inside:
                walked.links_outside += 1
                continue
            try:
                folder_id = _folder_id(path)
            except OSError:
                walked.unreadable_folders += 1
                continue
            if folder_id not in seen:
                seen.add(folder_id)
                kept.append(name)
        dirs[:] = kept
        for name in sorted(names):
            if name.upper() == DICOMDIR:
                walked.dicomdirs += 1
            elif not name.startswith("."):
                yield Path(folder) / name


def _folder_id(path: str | Path) -> tuple[int, int]:
    """A folder by its device and inode: what two paths to it share (cheaper than realpath on a share)."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


@dataclass(frozen=True)
class FoundFiles:
    files: list[Path]
    broken_links: int  # links found in folders whose targets are gone: nothing to send, but said
    unreadable: int = 0  # entries whose kind could not be read, folders that could not be listed
    dicomdirs: int = 0  # DICOMDIR files in the folders, not sent
    links_outside: int = 0  # links to folders outside the folder given, not followed


def anything_left_out(walked: FoundFiles | SendSummary) -> bool:
    """Whether a walk of the input left out a file it could not take (a DICOMDIR is not one): `imx send`
    and `imx deid` then exit 1, so that a script does not take a partial run for a whole one."""
    return bool(walked.broken_links or walked.unreadable or walked.links_outside)


def walk_inputs(paths: Iterable[Path]) -> FoundFiles:
    """Every file under the given files and folders, each once, in a stable order; a path given
    explicitly is taken even if hidden. `PathNotFound` for a given path that does not exist."""
    given = [Path(p) for p in paths]
    found: dict[Path, None] = {}
    broken = unreadable = 0
    walked = _Walked()
    for index, path in enumerate(given):
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as error:  # a folder that may be listed but not entered: its name must not be shown
            raise PathUnreadable(index, len(given), path, error.strerror) from None
        if is_dir:
            for entry in _walk(path, walked):
                try:
                    if entry.is_file():
                        found[entry] = None
                    elif entry.is_symlink() and not entry.exists():
                        broken += 1
                except OSError:  # not even its kind can be read (a folder without search permission)
                    unreadable += 1
        elif is_file:
            found[path] = None
        else:
            raise PathNotFound(index, len(given), path)
    return FoundFiles(
        list(found), broken, unreadable + walked.unreadable_folders, walked.dicomdirs, walked.links_outside
    )


def find_files(paths: Iterable[Path]) -> list[Path]:
    """`walk_inputs`' files."""
    return walk_inputs(paths).files


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _outcome(result: AcceptanceResult) -> str:
    if isinstance(result, Accepted):
        return "accepted"
    if isinstance(result, Duplicate):
        return "duplicate"
    return result.reason


def send_files(
    files: list[Path],
    *,
    acceptance: Acceptance,
    source_org: str,
    requested_destination: str = "",
    progress: ProgressCallback | None = None,
) -> SendSummary:
    """Accept each file in turn; the caller has authenticated `source_org`."""
    summary = SendSummary()
    sizes = [_size(f) for f in files]
    bytes_total, bytes_done = sum(sizes), 0
    for done, (path, size) in enumerate(zip(files, sizes, strict=True), start=1):
        try:
            result = _send_one(path, size, acceptance, source_org, requested_destination)
        except EventRefused:  # this file's event only: the others can still go
            result = REFUSED_BY_BROKER
        except IngestUnavailable as exc:
            raise SendAborted(f"sending stopped after {summary.sent} of {len(files)} files: {exc}", summary) from exc
        if isinstance(result, str):
            summary.sent += 1
            summary.rejected[result] += 1
            outcome = result
        else:
            summary.add(result)
            outcome = _outcome(result)
        bytes_done += size
        if progress is not None:
            progress(SendProgress(done, len(files), bytes_done, bytes_total, outcome))
    return summary


def _send_one(
    path: Path, size: int, acceptance: Acceptance, source_org: str, requested_destination: str
) -> AcceptanceResult | str:
    """The acceptance's result, or UNREADABLE."""
    if size > acceptance.max_instance_bytes:  # not read at all
        return acceptance.reject_unread(source_org, CHANNEL, size)
    try:
        data = path.read_bytes()
    except OSError:
        return UNREADABLE
    return acceptance.accept(data, source_org, CHANNEL, requested_destination)


def send(
    paths: Iterable[Path] | FoundFiles,
    *,
    source_org: str,
    acceptance: Acceptance,
    organisations: KnownOrganisations,
    to: str | None = None,
    progress: ProgressCallback | None = None,
) -> SendSummary:
    """Check the organisation and destination, find the files (unless found already), send them."""
    destination = check_destination(to)
    if not organisations.exists(source_org):
        raise UnknownOrganisation(
            f"organisation {source_org!r} is not registered; add it first (OrganisationAdmin.AddOrganisation)"
        )
    found = paths if isinstance(paths, FoundFiles) else walk_inputs(paths)
    summary = send_files(
        found.files, acceptance=acceptance, source_org=source_org, requested_destination=destination, progress=progress
    )
    summary.broken_links = found.broken_links
    summary.unreadable = found.unreadable
    summary.dicomdirs = found.dicomdirs
    summary.links_outside = found.links_outside
    return summary


def send_with_settings(
    paths: Iterable[Path],
    *,
    source_org: str,
    settings: IngestSettings | None = None,
    to: str | None = None,
    progress: ProgressCallback | None = None,
    broker_wait_s: float = BROKER_WAIT_S,
) -> SendSummary:
    """What `imx send` calls: opens Kafka and MongoDB from settings (IMX_... variables) for the run.
    `BrokerNotAnswering` when Kafka has not let it create or see the topics within `broker_wait_s`."""
    settings = settings or IngestSettings()
    check_destination(to)  # what needs no server is checked before the servers are waited for
    found = walk_inputs(paths)  # once, before the servers are waited for: a missing path is named at once
    gave_up = threading.Event()
    deadline = threading.Timer(broker_wait_s, gave_up.set)
    deadline.daemon = True
    deadline.start()
    try:
        with open_ingest(settings, stop=gave_up) as resources:
            deadline.cancel()
            return send(
                found,
                source_org=source_org,
                acceptance=resources.acceptance,
                organisations=resources.organisations,
                to=to,
                progress=progress,
            )
    except StoppedBeforeStart:
        raise BrokerNotAnswering(settings.kafka_bootstrap, broker_wait_s) from None
    except PyMongoError as error:  # the organisations are read before any file is sent
        raise DatabaseNotAnswering(type(error).__name__) from None
    finally:
        deadline.cancel()


class DatabaseNotAnswering(PhiSafeError):
    """MongoDB did not answer when the sending organisation was looked up (its URI, which may hold a
    password, is not repeated)."""

    def __init__(self, error_type: str) -> None:
        super().__init__(
            f"MongoDB (IMX_MONGO_URI) did not answer ({error_type}): it is down, or the URI points elsewhere"
        )


class BrokerNotAnswering(PhiSafeError):
    """The broker refused or did not answer: down, or it asks for a sign-in the settings do not give."""

    def __init__(self, bootstrap: str, waited_s: float) -> None:
        super().__init__(
            f"Kafka at {bootstrap} did not answer within {waited_s:.0f} s: it is down, or it wants a sign-in "
            "(IMX_KAFKA_SECURITY_PROTOCOL, IMX_KAFKA_SASL_USERNAME, IMX_KAFKA_SASL_PASSWORD_FILE); "
            'on the devstack: eval "$(.venv/bin/python -m tools.devstack env ingest)"'
        )

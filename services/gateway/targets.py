"""Where the gateway stores: target URLs, the Store port every target implements, and its result.

Targets are written as URLs so one option names them all:
- `dicom://AE@host:port[?calling=AE]`: DIMSE C-STORE to the called AE title (PS3.8 AE titles: up to
  16 characters, no backslash or control characters); our AE title defaults to IMX-GATEWAY.
- `http(s)://host[:port]/path`: the base URL of a DICOMweb service; STOW-RS posts to `<base>/studies`.
- `file:///path`: a folder (absolute path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from services.gateway.fetched import Fetched
from services.proto_gen.imx.v1 import events_pb2

DEFAULT_CALLING_AE = "IMX-GATEWAY"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}\Z")  # PS3.5 AE VR: no backslash, no control chars

TargetKind = Literal["dicom", "dicomweb", "file"]

# The target ended the transfer of one instance (a DIMSE association aborted during its C-STORE) and
# still accepts connections: an answer about that instance, given up on after few attempts
# (RetryPolicy.few_attempts), unlike a target that cannot be reached, which is waited for.
ABORTED = "aborted"


class TargetError(ValueError):
    """A target URL that cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True)
class DicomTarget:
    called_ae: str
    host: str
    port: int
    calling_ae: str = DEFAULT_CALLING_AE
    kind: TargetKind = "dicom"


@dataclass(frozen=True)
class DicomWebTarget:
    base_url: str  # no trailing slash
    kind: TargetKind = "dicomweb"

    @property
    def stow_url(self) -> str:
        return f"{self.base_url}/studies"


@dataclass(frozen=True)
class FolderTarget:
    root: Path
    kind: TargetKind = "file"


Target = DicomTarget | DicomWebTarget | FolderTarget


@dataclass(frozen=True)
class StoreResult:
    """What one attempt to store an instance came to.

    `retryable` failures may succeed later (the PACS is out of resources, a 5xx); `unavailable` ones
    say the target could not be reached at all (connection refused, association rejected or aborted):
    the gateway waits for the target without spending the instance's attempts, so a PACS that is down
    for an hour dead-letters nothing. `status_detail` is machine-readable and never carries PHI
    (a DIMSE status "0xA700", an HTTP status "http-503", "connection-refused")."""

    ok: bool
    status_detail: str
    retryable: bool = False
    unavailable: bool = False

    @classmethod
    def stored(cls, detail: str) -> StoreResult:
        return cls(True, detail)

    @classmethod
    def failed(cls, detail: str, retryable: bool) -> StoreResult:
        return cls(False, detail, retryable=retryable)

    @classmethod
    def down(cls, detail: str) -> StoreResult:
        return cls(False, detail, retryable=True, unavailable=True)


class Store(Protocol):
    """Stores one verified Part 10 object (in memory or in a file, fetched.py) into the partner's
    system. Implementations never raise for the target's own failures: they answer with a StoreResult."""

    kind: TargetKind

    def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult: ...

    def close(self) -> None: ...


def _without_password(url: str, parts: SplitResult) -> str:
    """`url` as an error may quote it: a password in it (refused anyway) is not printed."""
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def parse_target(url: str) -> Target:
    """The target a URL names; TargetError with the reason when it names none."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    shown = _without_password(url, parts)
    if scheme == "dicom":
        if parts.password is not None:
            raise TargetError(f"{shown!r}: a DICOM target takes no password: dicom://AE@host:port")
        query = parse_qs(parts.query, keep_blank_values=True)  # "?calling=" is an empty title, not the default
        return _dicom_target(shown, parts.username, parts.hostname, parts, query)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise TargetError(f"{shown!r}: a DICOMweb target needs a host, e.g. https://pacs.example/dicomweb")
        if parts.query or parts.fragment:
            raise TargetError(f"{shown!r}: a DICOMweb base URL takes no query or fragment")
        if parts.username or parts.password:
            raise TargetError(f"{shown!r}: credentials do not belong in the target URL")
        if _port(shown, parts) == 0:
            raise TargetError(f"{shown!r}: the port must be a number from 1 to 65535")
        return DicomWebTarget(f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise TargetError(f"{shown!r}: a folder target is file:///absolute/path (no host)")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise TargetError(f"{shown!r}: a folder target needs an absolute path other than /")
        return FolderTarget(Path(path))
    raise TargetError(f"{shown!r}: unknown target; use dicom://AE@host:port, https://host/dicomweb or file:///path")


def _port(url: str, parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise TargetError(f"{url!r}: the port must be a number from 1 to 65535") from None


def _dicom_target(
    url: str, called: str | None, host: str | None, parts: SplitResult, query: dict[str, list[str]]
) -> DicomTarget:
    if not called:
        raise TargetError(f"{url!r}: a DICOM target names the called AE title: dicom://AE@host:port")
    called = unquote(called)
    if not _AE_TITLE.match(called) or not called.strip():
        raise TargetError(f"{url!r}: the called AE title must be 1-16 printable characters without a backslash")
    if not host:
        raise TargetError(f"{url!r}: a DICOM target needs a host: dicom://AE@host:port")
    port = _port(url, parts)
    if port is None or port == 0:
        raise TargetError(f"{url!r}: a DICOM target needs a port: dicom://AE@host:port")
    unknown = set(query) - {"calling"}
    if unknown:
        raise TargetError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; only ?calling=AE is known")
    calling = query.get("calling", [DEFAULT_CALLING_AE])[-1]
    if not _AE_TITLE.match(calling) or not calling.strip():
        raise TargetError(f"{url!r}: the calling AE title must be 1-16 printable characters without a backslash")
    return DicomTarget(called, host, port, calling)


def open_store(target: Target) -> Store:
    """The store for a target (imports the client it needs only then)."""
    if isinstance(target, DicomTarget):
        from services.gateway.dimse_store import DimseStore

        return DimseStore(target)
    if isinstance(target, DicomWebTarget):
        from services.gateway.stow_store import StowStore

        return StowStore(target)
    from services.gateway.folder_store import FolderStore

    return FolderStore(target)


def describe(target: Target) -> str:
    """How a target is named in logs and status lines (no credentials are ever in it)."""
    if isinstance(target, DicomTarget):
        return f"dicom://{target.called_ae}@{target.host}:{target.port}"
    if isinstance(target, DicomWebTarget):
        return target.base_url
    return f"file://{target.root}"

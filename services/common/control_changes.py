"""Every change made through the control plane, recorded: who (the token's name, never the token),
what (the method and the object it changed), the object's version before and after, and the outcome.

Records go to the insert-only `control_changes` collection of the service's database, `_id` =
`<ms since epoch, 13 digits>:<uuid>` so that time order is `_id` order and writing one is a single
insert; the audit service's API lists them (`GET /audit/control-changes`), like its access log. In
DICOM PS3.15 A.5.3 terms a change of configuration or keys is a Security Alert (110113) of type
Network, Security or Software Configuration; pause and resume are Application Activity (110100),
Application Stop/Start.

A version is what the object's store says it is: its `version` field (routes, profiles), else a short
SHA-256 of its stored document(s) (organisations, partners, keys), "" when there is no such object
(before an add, after a removal), "paused"/"running" for a service, "-" for what imx does not keep (a
partner's Kafka password lives in the broker only).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from bson import json_util
from pymongo.collection import Collection
from pymongo.database import Database

from services.common.dead_letter_handling import HANDLED, position

log = logging.getLogger(__name__)

Code = tuple[str, str]
SECURITY_ALERT: Code = ("110113", "Security Alert")
APPLICATION_ACTIVITY: Code = ("110100", "Application Activity")
NETWORK_CONFIGURATION: Code = ("110128", "Network Configuration")
SECURITY_CONFIGURATION: Code = ("110129", "Security Configuration")
SOFTWARE_CONFIGURATION: Code = ("110131", "Software Configuration")
APPLICATION_START: Code = ("110120", "Application Start")
APPLICATION_STOP: Code = ("110121", "Application Stop")
USE_OF_RESTRICTED_FUNCTION: Code = ("110132", "Use of Restricted Function")
UNKNOWN = "?"  # the version could not be read (its store did not answer)
NOT_KEPT = "-"
SERVICE_KIND = "service"  # pause and resume: the object changed is the service that was called
CHANGES_COLLECTION = "control_changes"  # the audit service appends each record to its tamper-evident log


@dataclass(frozen=True)
class ChangeRecord:
    who: str
    role: str
    service: str
    method: str
    object_kind: str
    object_id: str
    before: str
    after: str
    outcome: str  # "OK" or the gRPC status code's name
    event_id: Code
    event_type: Code
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        ms = int(self.occurred_at.timestamp() * 1000)
        doc["_id"] = f"{ms:013d}:{uuid.uuid4().hex}"
        doc["event_id"] = {"code": self.event_id[0], "meaning": self.event_id[1]}
        doc["event_type"] = {"code": self.event_type[0], "meaning": self.event_type[1]}
        # PS3.15 EventOutcomeIndicator: 0 success, 4 minor failure (refused as asked), 8 serious failure.
        doc["outcome_indicator"] = 0 if self.outcome == "OK" else 8 if self.outcome in ("INTERNAL", "UNKNOWN") else 4
        return doc


class ChangeLog(Protocol):
    def record(self, change: ChangeRecord) -> None: ...


class MongoChangeLog:
    def __init__(self, db: Database) -> None:
        self._changes: Collection[dict[str, Any]] = db[CHANGES_COLLECTION]

    def record(self, change: ChangeRecord) -> None:
        self._changes.insert_one(change.document())

    def recent(self, limit: int = 100, before_id: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` records (older than `before_id` when given), newest first."""
        query = {"_id": {"$lt": before_id}} if before_id else {}
        return list(self._changes.find(query).sort("_id", -1).limit(limit))


class MemoryChangeLog:
    def __init__(self) -> None:
        self.changes: list[ChangeRecord] = []

    def record(self, change: ChangeRecord) -> None:
        self.changes.append(change)


@dataclass(frozen=True)
class VersionSources:
    """Where versions are read: the service's database, and its own paused flag."""

    db: Database | None
    paused: Callable[[], bool]


Reader = Callable[[VersionSources, str], str]


def version_of(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return ""
    if len(docs) == 1 and "version" in docs[0]:
        return str(docs[0]["version"])
    text = json_util.dumps(sorted(docs, key=lambda d: str(d.get("_id"))), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _documents(collection: str, key: str = "_id") -> Reader:
    def read(sources: VersionSources, object_id: str) -> str:
        if sources.db is None:
            return NOT_KEPT
        return version_of(list(sources.db[collection].find({key: object_id})))

    return read


def _paused(sources: VersionSources, _object_id: str) -> str:
    return "paused" if sources.paused() else "running"


def _no_id(_request: Any) -> str:
    return ""  # the service called is the object (control_auth names it)


def _not_kept(_sources: VersionSources, _object_id: str) -> str:
    return NOT_KEPT


@dataclass(frozen=True)
class ChangeTarget:
    kind: str
    object_id: Callable[[Any], str]
    version: Reader
    event_id: Code
    event_type: Code


def _config(kind: str, object_id: Callable[[Any], str], version: Reader, event_type: Code) -> ChangeTarget:
    return ChangeTarget(kind, object_id, version, SECURITY_ALERT, event_type)


_ORGS, _ROUTES, _PARTNERS = _documents("organisations"), _documents("routes"), _documents("partners")
_PROFILES, _ANALYSTS = _documents("profiles"), _documents("audit_analysts", "analyst_id")
_TOKENS = _documents("control_tokens", "name")
# A replay or a discard of one dead letter, named by its position; what operators did with it is its version.
_DEAD_LETTER = ChangeTarget(
    "dead-letter", lambda r: position(r.partition, r.offset), _documents(HANDLED), APPLICATION_ACTIVITY,
    SOFTWARE_CONFIGURATION,
)  # fmt: skip

# Every method that changes something, with how to name the object and read its version. A method here
# is recorded whoever calls it and whatever its outcome; reads are not, but for a profile's preview: it
# shows an instance's real values, and with a partner's key that partner's pseudonyms of them, the link
# de-identification removes.
CHANGES: dict[str, ChangeTarget] = {
    "/imx.v1.Control/Pause": ChangeTarget(SERVICE_KIND, _no_id, _paused, APPLICATION_ACTIVITY, APPLICATION_STOP),
    "/imx.v1.Control/Resume": ChangeTarget(SERVICE_KIND, _no_id, _paused, APPLICATION_ACTIVITY, APPLICATION_START),
    "/imx.v1.OrganisationAdmin/AddOrganisation": _config(
        "organisation", lambda r: r.organisation.org_id, _ORGS, NETWORK_CONFIGURATION
    ),
    "/imx.v1.OrganisationAdmin/RemoveOrganisation": _config(
        "organisation", lambda r: r.org_id, _ORGS, NETWORK_CONFIGURATION
    ),
    "/imx.v1.RoutingAdmin/AddRoute": _config("route", lambda r: r.route.route_id, _ROUTES, SOFTWARE_CONFIGURATION),
    "/imx.v1.RoutingAdmin/RemoveRoute": _config("route", lambda r: r.route_id, _ROUTES, SOFTWARE_CONFIGURATION),
    "/imx.v1.PartnerAdmin/AddPartner": _config(
        "partner", lambda r: r.partner.partner_id, _PARTNERS, NETWORK_CONFIGURATION
    ),
    "/imx.v1.PartnerAdmin/RemovePartner": _config("partner", lambda r: r.partner_id, _PARTNERS, NETWORK_CONFIGURATION),
    "/imx.v1.PartnerAdmin/ResetPartnerPassword": _config(
        "partner-kafka-password", lambda r: r.partner_id, _not_kept, SECURITY_CONFIGURATION
    ),
    "/imx.v1.PartnerAdmin/ResetPartnerDicomwebKey": _config(
        "partner-dicomweb-key", lambda r: r.partner_id, _documents("partner_keys", "partner_id"), SECURITY_CONFIGURATION
    ),
    "/imx.v1.ProfileAdmin/AddProfile": _config("profile", lambda r: r.profile.name, _PROFILES, SOFTWARE_CONFIGURATION),
    "/imx.v1.ProfileAdmin/RemoveProfile": _config("profile", lambda r: r.name, _PROFILES, SOFTWARE_CONFIGURATION),
    "/imx.v1.AnalystAdmin/AddAnalyst": _config(
        "analyst", lambda r: r.analyst.analyst_id, _ANALYSTS, SECURITY_CONFIGURATION
    ),
    "/imx.v1.AnalystAdmin/RemoveAnalyst": _config("analyst", lambda r: r.analyst_id, _ANALYSTS, SECURITY_CONFIGURATION),
    "/imx.v1.ControlTokenAdmin/AddControlToken": _config(
        "control-token", lambda r: r.token.name, _TOKENS, SECURITY_CONFIGURATION
    ),
    "/imx.v1.ControlTokenAdmin/RemoveControlToken": _config(
        "control-token", lambda r: r.name, _TOKENS, SECURITY_CONFIGURATION
    ),
    "/imx.v1.ProfileAdmin/Preview": ChangeTarget(
        "profile-preview",
        lambda r: f"{r.profile}:{r.partner_id}" if r.partner_id else r.profile,
        _not_kept,
        SECURITY_ALERT,
        USE_OF_RESTRICTED_FUNCTION,
    ),
    "/imx.v1.DeadLetterAdmin/ReplayDeadLetter": _DEAD_LETTER,
    "/imx.v1.DeadLetterAdmin/DiscardDeadLetter": _DEAD_LETTER,
}


def read_version(target: ChangeTarget, sources: VersionSources, object_id: str) -> str:
    """The object's version, or UNKNOWN when its store does not answer (the change itself decides
    whether that is fatal; the record then says so)."""
    try:
        return target.version(sources, object_id)
    except Exception as error:  # a version is evidence, never a reason to refuse
        log.warning("version of a changed object unreadable", extra={"error": type(error).__name__})
        return UNKNOWN

"""Routes in MongoDB, versioned: every change bumps the route's version and a global counter, so
routing replicas notice changes with one cheap read and reload."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from services.common.profile_names import BUILTIN_PROFILE_NAMES
from services.common.stores.config_versions import ConfigVersion
from services.common.stores.partners import PartnerStore
from services.common.topics import is_reserved_partner_id
from services.common.ttl_cache import RefreshingSnapshot
from services.routing.rules import PRIORITY_CLASSES, Route, RouteMatch, validate_route

log = logging.getLogger(__name__)


def route_to_doc(route: Route) -> dict[str, Any]:
    doc = asdict(route)
    doc["_id"] = doc.pop("route_id")
    doc["match"] = {k: list(v) if isinstance(v, tuple) else v for k, v in doc["match"].items()}
    return doc


def route_from_doc(doc: dict[str, Any]) -> Route:
    m = doc.get("match", {})
    return Route(
        route_id=doc["_id"],
        partner_id=doc["partner_id"],
        profile=doc.get("profile", ""),
        name=doc.get("name", ""),
        priority=int(doc.get("priority", 100)),
        enabled=bool(doc.get("enabled", True)),
        version=int(doc.get("version", 1)),
        priority_class=_priority_class(doc.get("priority_class", "routine")),
        match=RouteMatch(
            source_orgs=tuple(m.get("source_orgs", [])),
            modalities=tuple(m.get("modalities", [])),
            sop_class_uids=tuple(m.get("sop_class_uids", [])),
            study_description=m.get("study_description", ""),
            body_part=m.get("body_part", ""),
            requested_destination=m.get("requested_destination", ""),
        ),
    )


def _priority_class(value: object) -> str:
    if value not in PRIORITY_CLASSES:
        raise ValueError("not a priority class")
    return str(value)


class RouteStore:
    def __init__(self, db: Database) -> None:
        self._routes = db["routes"]
        # route id -> the last version given under it: kept across a removal, so a version never repeats
        self._versions = db["route_versions"]
        self._changes = ConfigVersion(db, "routes")
        self._partners = db["partners"]
        self._partner_store = PartnerStore(db)
        self._profiles = db["profiles"]

    def config_version(self) -> int:
        return self._changes.current()

    def add(self, route: Route) -> Route:
        """Create or replace a route; its version goes up by one on every change and never repeats,
        even across a removal or two changes at once (change records name a route's content by it)."""
        validate_route(route)
        if is_reserved_partner_id(route.partner_id) and not self._partners.count_documents(
            {"_id": route.partner_id}, limit=1
        ):
            # The system's own Kafka names: no partner can be added under one now (one given before may
            # stay), so what the route matched was quarantined for ever, the operator told "until it is added".
            raise ValueError(f"partner id {route.partner_id!r} is reserved: no partner can take it")
        saved = Route(**{**asdict(route), "match": route.match, "version": self._next_version(route.route_id)})
        doc = route_to_doc(saved)
        doc["updated_at_ms"] = int(time.time() * 1000)
        # Only over an older version: of two changes at once, the one given the lower version could write
        # last, and the older content was what routed while the newer change was acknowledged and recorded.
        try:
            self._routes.replace_one({"_id": route.route_id, "version": {"$lt": saved.version}}, doc, upsert=True)
        except DuplicateKeyError:  # a newer version is stored; or one written by hand without a version
            stored = self._routes.find_one({"_id": route.route_id}, {"version": 1}) or {}
            if not isinstance(stored.get("version"), int | float):  # a number (mongosh writes doubles) is one
                self._routes.replace_one({"_id": route.route_id}, doc)
        self._changes.bump()
        return saved

    def _next_version(self, route_id: str) -> int:
        existing = self._routes.find_one({"_id": route_id}, {"version": 1})
        if existing is not None:
            # A route saved before the counter existed (2026-12-07): the counter starts at its version, raised
            # before the increment so that two first changes at once still get two versions.
            self._versions.update_one(
                {"_id": route_id}, {"$max": {"version": int(existing.get("version", 0))}}, upsert=True
            )
        counted = self._versions.find_one_and_update(
            {"_id": route_id}, {"$inc": {"version": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(counted["version"]) if counted else 1

    def unmet_references(self, route: Route) -> list[str]:
        """What `route` names that does not exist (yet): what it matches is quarantined until it does.
        Said, not refused, so that routes may be set up before their partners and profiles. Asked after the
        route is saved: MongoDB failing now is said too, not reported as the save failing."""
        try:
            return self._unmet(route)
        except PyMongoError as error:
            return [f"whether its partner and profile exist could not be checked ({type(error).__name__})"]

    def _unmet(self, route: Route) -> list[str]:
        unmet = []
        if self._partner_store.retired(route.partner_id):
            unmet.append(
                f"partner {route.partner_id!r} was removed, and its id is never given again: what this route "
                "matches is quarantined until the route is changed"
            )
        elif self._partners.count_documents({"_id": route.partner_id}, limit=1) == 0:
            unmet.append(
                f"no partner {route.partner_id!r} yet: what this route matches is quarantined until it is added"
            )
        profile = route.profile
        if (
            profile
            and profile not in BUILTIN_PROFILE_NAMES
            and self._profiles.count_documents({"_id": profile}, limit=1) == 0
        ):
            unmet.append(f"no profile {profile!r} yet: what this route matches is quarantined until it is added")
        return unmet

    def remove(self, route_id: str) -> bool:
        removed = self._routes.delete_one({"_id": route_id}).deleted_count == 1
        self._changes.bump()  # also when nothing was found: a retry announces a removal whose bump failed
        return removed

    def list(self) -> list[Route]:
        """The routes, by priority; one this code cannot read (written by hand, or by an older or later
        version) is skipped and logged: failing on it sent every instance to the dead-letter topic."""
        routes = []
        for doc in self._routes.find().sort([("priority", 1), ("_id", 1)]):
            try:
                routes.append(route_from_doc(doc))
            except (KeyError, ValueError, TypeError) as error:
                log.warning(
                    "unreadable route skipped", extra={"route_id": str(doc.get("_id")), "error": type(error).__name__}
                )
        return routes


class CachedRoutes:
    """The routing handler's view of the rules: reloaded when the config version changes, checked at
    most every `refresh_s` seconds so the hot path costs no database read. While MongoDB is away the
    routes last read stay in force; before any were read, a routing attempt fails (and is retried)
    rather than quarantine every instance as no-route."""

    def __init__(self, store: RouteStore, refresh_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._routes = RefreshingSnapshot(
            lambda _previous: store.list(),
            refresh_s,
            version=store.config_version,
            keep_on=(PyMongoError,),
            name="routes",
            clock=clock,
        )

    def current(self) -> list[Route]:
        return self._routes.get()

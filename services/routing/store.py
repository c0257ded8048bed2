"""Routes in MongoDB, versioned: every change bumps the route's version and a global counter, so
routing replicas notice changes with one cheap read and reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import PyMongoError

from services.common.profile_names import BUILTIN_PROFILE_NAMES
from services.common.ttl_cache import RefreshingSnapshot
from services.routing.rules import Route, RouteMatch, validate_route


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
        priority_class=str(doc.get("priority_class", "routine")),
        match=RouteMatch(
            source_orgs=tuple(m.get("source_orgs", [])),
            modalities=tuple(m.get("modalities", [])),
            sop_class_uids=tuple(m.get("sop_class_uids", [])),
            study_description=m.get("study_description", ""),
            body_part=m.get("body_part", ""),
            requested_destination=m.get("requested_destination", ""),
        ),
    )


class RouteStore:
    def __init__(self, db: Database) -> None:
        self._routes = db["routes"]
        self._meta = db["config_versions"]
        self._partners = db["partners"]
        self._profiles = db["profiles"]

    def _bump(self) -> int:
        doc = self._meta.find_one_and_update(
            {"_id": "routes"}, {"$inc": {"version": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["version"]) if doc else 0

    def config_version(self) -> int:
        doc = self._meta.find_one({"_id": "routes"})
        return int(doc["version"]) if doc else 0

    def add(self, route: Route) -> Route:
        """Create or replace a route; its version goes up by one on every change."""
        validate_route(route)
        existing = self._routes.find_one({"_id": route.route_id}, {"version": 1})
        version = int(existing["version"]) + 1 if existing else 1
        saved = Route(**{**asdict(route), "match": route.match, "version": version})
        doc = route_to_doc(saved)
        doc["updated_at_ms"] = int(time.time() * 1000)
        self._routes.replace_one({"_id": route.route_id}, doc, upsert=True)
        self._bump()
        return saved

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
        if self._partners.count_documents({"_id": route.partner_id}, limit=1) == 0:
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
        if removed:
            self._bump()
        return removed

    def list(self) -> list[Route]:
        return [route_from_doc(d) for d in self._routes.find().sort([("priority", 1), ("_id", 1)])]


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

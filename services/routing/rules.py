"""Route rules and matching (pure).

A rule matches when every criterion it sets matches; an empty criterion matches anything. Several
rules may match one instance: each distinct partner gets one copy, and when two rules name the same
partner the one with the lower priority number (then the lower id) decides the profile.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.common.dicom.uids import is_uid_as_received
from services.common.display_names import validate_display_name
from services.common.messages import shown
from services.common.profile_names import validate_profile_name
from services.common.stores.organisations import is_organisation_id
from services.common.topics import validate_partner_id

_ROUTE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# PS3.5 CS (matched without regard to case); no space at either end, which is padding: ingest strips it
# from the instance's value, so a route for "CT " matched nothing.
_MODALITY = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_ ]{0,14}[A-Za-z0-9_])?\Z")
MAX_MATCH_VALUES = 1000  # per list: every instance is compared with each

# A route's class says how urgently its instances move: urgent (stroke, trauma) overtakes routine,
# which overtakes bulk (research, 3D modelling).
PRIORITY_CLASSES = ("urgent", "routine", "bulk")


@dataclass(frozen=True)
class RouteMatch:
    source_orgs: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    study_description: str = ""
    body_part: str = ""
    requested_destination: str = ""


@dataclass(frozen=True)
class Route:
    route_id: str
    partner_id: str
    profile: str = ""
    name: str = ""
    priority: int = 100
    match: RouteMatch = field(default_factory=RouteMatch)
    enabled: bool = True
    version: int = 1
    priority_class: str = "routine"


@dataclass(frozen=True)
class RoutingInput:
    source_org: str
    requested_destination: str
    attributes: Mapping[str, str]


@dataclass(frozen=True)
class RouteDecision:
    route_id: str
    partner_id: str
    profile: str
    version: int
    priority_class: str = "routine"


def validate_route(route: Route) -> Route:
    if not _ROUTE_ID.match(route.route_id):
        raise ValueError("route id must be 1-63 characters of lower-case letters, digits and '-'")
    validate_partner_id(route.partner_id)
    if route.priority < 1:
        # 0 on the wire is "unset" (100), so a route saved as 0 would have ranked below one saved as 50.
        raise ValueError(f"priority must be at least 1 (lower wins; unset is 100), got {route.priority}")
    if route.priority_class not in PRIORITY_CLASSES:
        raise ValueError(f"priority class must be one of {', '.join(PRIORITY_CLASSES)} (got {route.priority_class!r})")
    if route.profile:
        validate_profile_name(route.profile)
    validate_display_name(route.name, "route")
    _validate_match(route.match)
    return route


def _validate_match(match: RouteMatch) -> None:
    for pattern in (match.study_description, match.body_part, match.requested_destination):
        if len(pattern) > 256:
            raise ValueError("patterns are limited to 256 characters")
    lists = (
        ("source organisation", match.source_orgs, is_organisation_id),
        ("modality", match.modalities, lambda value: _MODALITY.match(value) is not None),
        ("SOP class UID", match.sop_class_uids, is_uid_as_received),
    )
    for label, values, valid in lists:
        if len(values) > MAX_MATCH_VALUES:
            raise ValueError(f"{len(values)} values of {label} given; a route matches at most {MAX_MATCH_VALUES}")
        for value in values:
            if not valid(value):
                raise ValueError(f"{shown(value)} is not a valid {label}")


def _glob(pattern: str, value: str) -> bool:
    return not pattern or fnmatch.fnmatchcase(value.casefold(), pattern.casefold())


def _any_of(allowed: tuple[str, ...], value: str, fold: bool = False) -> bool:
    if not allowed:
        return True
    if fold:
        return value.casefold() in {a.casefold() for a in allowed}
    return value in allowed


def route_matches(match: RouteMatch, item: RoutingInput) -> bool:
    attrs = item.attributes
    return (
        _any_of(match.source_orgs, item.source_org)
        and _any_of(match.modalities, attrs.get("modality", ""), fold=True)
        and _any_of(match.sop_class_uids, attrs.get("sop_class_uid", ""))
        and _glob(match.study_description, attrs.get("study_description", ""))
        and _glob(match.body_part, attrs.get("body_part_examined", ""))
        and (
            not match.requested_destination
            or (bool(item.requested_destination) and _glob(match.requested_destination, item.requested_destination))
        )
    )


def decide(routes: Iterable[Route], item: RoutingInput) -> list[RouteDecision]:
    """One decision per partner, ordered by priority; [] means no route (quarantine)."""
    chosen: dict[str, RouteDecision] = {}
    for route in sorted(routes, key=lambda r: (r.priority, r.route_id)):
        if route.enabled and route.partner_id not in chosen and route_matches(route.match, item):
            chosen[route.partner_id] = RouteDecision(
                route.route_id, route.partner_id, route.profile, route.version, route.priority_class
            )
    return list(chosen.values())

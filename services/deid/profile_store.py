"""De-identification profiles in MongoDB, named and versioned.

`profiles` holds the current version of each profile; `profile_versions` keeps every version ever
saved (`_id` = "name@version", immutable), so the profile version on an audit record can always be
looked up, even after the profile was changed or removed. Every change bumps a global counter
(`config_versions`, `_id` "profiles") so deid replicas notice changes with one cheap read.

The built-in profiles (`basic`, `research`) are the engine's own objects: they always exist, at
version 1, and cannot be overwritten or removed.

No transactions (FerretDB 1.x): a version number is claimed by inserting its immutable document
(the unique `_id` makes two concurrent writers pick different numbers), then the current document
is replaced only if it is older, so the newest version wins whatever order the writes land in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from services.common.messages import TransientError
from services.common.profile_names import validate_profile_name
from services.common.stores.config_versions import ConfigVersion
from services.common.ttl_cache import RefreshingSnapshot
from services.deid.engine import BUILTIN_PROFILES, Profile
from services.deid.profile_documents import (
    check_before_saving,
    profile_from_document,
    profile_to_document,
    profile_version_number,
    same_content,
)

log = logging.getLogger(__name__)
BUILTIN_VERSION = 1
_CLAIM_ATTEMPTS = 8
_PINNED_MAX = 256


class ProtectedProfile(ValueError):
    """A change to a built-in profile."""


def _to_mongo(profile: Profile) -> dict[str, Any]:
    doc = profile_to_document(profile)
    # Tags are not used as field names: "(0010,0010)" is legal, but a list is portable to any store.
    doc["overrides"] = [{"tag": tag, "action": action} for tag, action in doc["overrides"].items()]
    return doc


def _from_mongo(doc: Mapping[str, Any] | None) -> Profile | None:
    """None for no document, and for one this code cannot read (written by hand, or by a later
    version with rules this one does not know): instances routed to it are quarantined rather than
    every message failing."""
    if doc is None:
        return None
    try:
        fields = {k: v for k, v in doc.items() if k in ("name", "version", "options", "pixel_rules")}
        fields["overrides"] = {o["tag"]: o["action"] for o in doc.get("overrides", [])}
        return profile_from_document(fields)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable profile document skipped", extra={"profile": str(doc.get("_id")), "error": str(exc)})
        return None


class ProfileStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._profiles = db["profiles"]
        self._versions = db["profile_versions"]
        self._changes = ConfigVersion(db, "profiles")
        self._clock = clock

    def config_version(self) -> int:
        return self._changes.current()

    def add(self, profile: Profile) -> tuple[Profile, bool]:
        """Create or replace; returns the saved profile and whether anything changed.

        The version goes up by one on every change and never repeats, even across a removal.
        Saving the same content again changes nothing (and keeps the version).
        """
        name = validate_profile_name(check_before_saving(profile).name)
        if name in BUILTIN_PROFILES:
            raise ProtectedProfile(
                f"{name!r} is a built-in profile and cannot be overwritten; save your version under another name"
            )
        for _ in range(_CLAIM_ATTEMPTS):
            current = self.get(name)
            if current is not None and same_content(current, profile):
                return current, False
            version = self._latest_version(name) + 1
            saved = replace(profile, version=str(version))
            doc = _to_mongo(saved)
            now_ms = int(self._clock() * 1000)
            try:
                self._versions.insert_one({**doc, "_id": f"{name}@{version}", "saved_at_ms": now_ms})
            except DuplicateKeyError:
                continue  # a concurrent writer claimed this number: look again
            current_doc = {**doc, "_id": name, "updated_at_ms": now_ms}
            with contextlib.suppress(DuplicateKeyError):  # a newer version is already current
                self._profiles.replace_one({"_id": name, "version": {"$lt": version}}, current_doc, upsert=True)
            self._changes.bump()
            return saved, True
        raise TransientError(f"profile {name!r} is being changed concurrently; try again")

    def _latest_version(self, name: str) -> int:
        latest = list(self._versions.find({"name": name}, {"version": 1}).sort("version", -1).limit(1))
        return int(latest[0]["version"]) if latest else 0

    def get(self, name: str, version: int | None = None) -> Profile | None:
        """The current profile, or one exact version (0 or None = current); None when there is none."""
        if name in BUILTIN_PROFILES:
            return BUILTIN_PROFILES[name] if version in (None, 0, BUILTIN_VERSION) else None
        if not version:
            doc = self._profiles.find_one({"_id": name})
        else:
            doc = self._versions.find_one({"_id": f"{name}@{version}"})
        return _from_mongo(doc)

    def versions(self, name: str) -> list[int]:
        """Every version saved under `name`, oldest first (also those of a removed profile)."""
        if name in BUILTIN_PROFILES:
            return [BUILTIN_VERSION]
        return [int(d["version"]) for d in self._versions.find({"name": name}, {"version": 1}).sort("version", 1)]

    def list(self) -> list[Profile]:
        """Current profiles, built-ins included, by name."""
        loaded = (_from_mongo(d) for d in self._profiles.find() if d["_id"] not in BUILTIN_PROFILES)
        stored = [p for p in loaded if p is not None]
        return sorted([*BUILTIN_PROFILES.values(), *stored], key=lambda p: p.name)

    def remove(self, name: str) -> bool:
        """Remove the current profile; its versions stay for audit. Instances routed to it are then
        quarantined (unknown-profile)."""
        if name in BUILTIN_PROFILES:
            raise ProtectedProfile(f"{name!r} is a built-in profile and cannot be removed")
        removed = self._profiles.delete_one({"_id": name}).deleted_count == 1
        self._changes.bump()  # also when nothing was found: a retry announces a removal whose bump failed
        return removed


class CachedProfiles:
    """The deid handler's view of the profiles: reloaded when the config version changes, checked at
    most every `refresh_s` seconds, so the hot path costs no database read.

    Profile objects are kept across reloads while their version is unchanged: each one compiles its
    rules once, on first use.
    """

    def __init__(
        self, store: ProfileStore, refresh_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        # A failed check keeps serving what was loaded; a change is noticed on the next successful one.
        self._profiles = RefreshingSnapshot(
            self._load,
            refresh_s,
            version=store.config_version,
            keep_on=(PyMongoError,),
            name="profiles",
            clock=clock,
        )
        self._pinned: dict[tuple[str, int], Profile] = {}

    def current(self) -> Mapping[str, Profile]:
        try:
            return self._profiles.get()
        except PyMongoError as exc:  # nothing loaded yet: retried, not quarantined as unknown-profile
            raise TransientError(f"profiles unavailable: {type(exc).__name__}") from exc

    def _load(self, old: Mapping[str, Profile] | None) -> Mapping[str, Profile]:
        fresh = {}
        for profile in self._store.list():
            kept = old.get(profile.name) if old is not None else None
            fresh[profile.name] = kept if kept is not None and kept.version == profile.version else profile
        return MappingProxyType(fresh)

    def lookup(self, name: str, version: int = 0) -> Profile | None:
        """The current profile (version 0), or an exact older version (immutable, so cached for good)."""
        profile = self.current().get(name)
        if not version or (profile is not None and profile_version_number(profile) == version):
            return profile
        key = (name, version)
        if key not in self._pinned:
            try:
                found = self._store.get(name, version)
            except PyMongoError as exc:
                raise TransientError(f"profiles unavailable: {type(exc).__name__}") from exc
            if found is None:
                return None
            if len(self._pinned) >= _PINNED_MAX:
                self._pinned.clear()
            self._pinned[key] = found
        return self._pinned[key]

"""One counter per kind of configuration (routes, profiles) in `config_versions`: every change bumps it,
so each replica's cached copy (services/common/ttl_cache.py RefreshingSnapshot) notices a change with
one cheap read and reloads.

A change is saved first and bumped second, and the two are not one write: MongoDB failing between them
leaves the change saved but unannounced, and the caches keep what they had until the next bump. So a
removal bumps even when it finds nothing to remove: the operator's retry of the failed call is what
announces it."""

from __future__ import annotations

from pymongo import ReturnDocument
from pymongo.database import Database

COLLECTION = "config_versions"


class ConfigVersion:
    def __init__(self, db: Database, kind: str) -> None:
        self._meta = db[COLLECTION]
        self._kind = kind

    def bump(self) -> int:
        doc = self._meta.find_one_and_update(
            {"_id": self._kind}, {"$inc": {"version": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["version"]) if doc else 0

    def current(self) -> int:
        doc = self._meta.find_one({"_id": self._kind})
        return int(doc["version"]) if doc else 0

"""Analysts: who may query the audit API. Each has an API key, shown once when issued.

The store keeps only the key's SHA-256 digest, as the document's `_id`: a lookup is then a primary-key
read (FerretDB 1.x scans collections for any other query). Checks are cached for a few seconds so
that a dashboard's burst of requests costs one read, and a removed analyst is refused within that time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError

from services.audit.scopes import Scope
from services.common.api_keys import api_key_digest, issue_api_key
from services.common.display_names import validate_display_name
from services.common.messages import TransientError
from services.common.ttl_cache import ttl_cached

_ANALYST_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
KEY_PREFIX = "imx_audit_"


@dataclass(frozen=True)
class Analyst:
    analyst_id: str
    name: str = ""
    scope: Scope = field(default_factory=Scope)  # what the key may see (services/audit/scopes.py)


class AnalystStore:
    def __init__(self, db: Database) -> None:
        self._keys = db["audit_analysts"]

    def add(self, analyst: Analyst) -> str:
        """A new API key for `analyst` (an existing analyst's earlier keys stop working)."""
        if not _ANALYST_ID.match(analyst.analyst_id):
            raise ValueError("analyst id must be 1-63 characters of lower-case letters, digits, '.', '_' and '-'")
        validate_display_name(analyst.name, "analyst")
        api_key = issue_api_key(KEY_PREFIX)
        self._keys.delete_many({"analyst_id": analyst.analyst_id})
        self._keys.insert_one(
            {
                "_id": api_key_digest(api_key),
                "analyst_id": analyst.analyst_id,
                "name": analyst.name,
                "scope": str(analyst.scope),
            }
        )
        return api_key

    def remove(self, analyst_id: str) -> bool:
        return self._keys.delete_many({"analyst_id": analyst_id}).deleted_count > 0

    def list(self) -> list[Analyst]:
        docs = self._keys.find({}, {"analyst_id": 1, "name": 1, "scope": 1})
        return sorted({_analyst(d) for d in docs}, key=lambda a: a.analyst_id)

    def analyst_for_key(self, api_key: str) -> str | None:
        return self.analyst_for_digest(api_key_digest(api_key))

    def analyst_for_digest(self, digest: str) -> str | None:
        holder = self.key_holder(digest)
        return holder.analyst_id if holder else None

    def key_holder(self, digest: str) -> Analyst | None:
        """The analyst holding the key with this digest, with the key's scope."""
        doc = self._keys.find_one({"_id": digest}, {"analyst_id": 1, "name": 1, "scope": 1})
        return _analyst(doc) if doc else None


def _analyst(doc: dict[str, Any]) -> Analyst:
    """A key stored before scopes existed sees everything, as it did."""
    return Analyst(str(doc["analyst_id"]), doc.get("name", ""), Scope.parse(doc.get("scope") or "all"))


class CachedKeyCheck:
    """The key's holder, remembered for `ttl_s` seconds per key (hits and misses alike). Called, it gives
    the analyst id; `holder` gives the analyst with the key's scope."""

    def __init__(self, store: AnalystStore, ttl_s: float = 5.0) -> None:
        # Keyed by digest, so no key is held in memory; bounded, so a flood of wrong keys cannot grow it.
        self._holder = ttl_cached(store.key_holder, ttl_s, max_entries=10_000)

    def __call__(self, api_key: str) -> str | None:
        holder = self.holder(api_key)
        return holder.analyst_id if holder else None

    def holder(self, api_key: str) -> Analyst | None:
        """TransientError when the key cannot be looked up (MongoDB away): the caller answers 503, not
        a 500 with pymongo's traceback."""
        try:
            return self._holder(api_key_digest(api_key))
        except PyMongoError as error:
            raise TransientError(f"analyst keys unavailable: {type(error).__name__}") from None

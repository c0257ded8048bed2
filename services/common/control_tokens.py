"""Bearer tokens for the gRPC control plane, issued by `imx tokens add NAME --role ...`.

A token is shown once; MongoDB keeps its SHA-256 digest as the document's `_id` (`control_tokens`), with
the holder's name and role, so a copy of the database grants nothing and a check is one primary-key read
(FerretDB 1.x scans for any other query). Every service checks tokens against the same collection,
remembering each answer for a few seconds: a removed token is refused everywhere within that time.

The bootstrap token is the first administrator's, before any token is stored: a file the deployment
makes (the devstack's var/secrets/control-token, the chart's Secret) named by
IMX_CONTROL_BOOTSTRAP_TOKEN_FILE. Services keep only its digest; the file may hold the digest itself
(`sha256:<hex>`) so a service need never see the token.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.database import Database

from services.common.api_keys import api_key_digest, issue_api_key
from services.common.control_roles import Role
from services.common.ttl_cache import TtlCache

TOKEN_PREFIX = "imx_ctl_"
BOOTSTRAP_NAME = "bootstrap"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")


@dataclass(frozen=True)
class Caller:
    """Who presented a token: the name it was issued to, and its role. Never the token."""

    name: str
    role: Role
    created_at_ms: int = 0


class TokenStore:
    def __init__(self, db: Database) -> None:
        self._tokens = db["control_tokens"]

    def add(self, name: str, role: Role) -> str:
        """A new token for `name` (shown once); an earlier token of that name stops working."""
        if not _NAME.match(name) or name == BOOTSTRAP_NAME:
            raise ValueError(
                "token name must be 1-63 characters of lower-case letters, digits, '.', '_' and '-', "
                f"and not {BOOTSTRAP_NAME!r}"
            )
        token = issue_api_key(TOKEN_PREFIX)
        self._tokens.delete_many({"name": name})
        self._tokens.insert_one(
            {"_id": api_key_digest(token), "name": name, "role": role.value, "created_at_ms": int(time.time() * 1000)}
        )
        return token

    def remove(self, name: str) -> bool:
        return self._tokens.delete_many({"name": name}).deleted_count > 0

    def list(self) -> list[Caller]:
        docs = self._tokens.find({}, {"name": 1, "role": 1, "created_at_ms": 1})
        return sorted((_caller(d) for d in docs), key=lambda c: c.name)

    def holder(self, digest: str) -> Caller | None:
        doc = self._tokens.find_one({"_id": digest}, {"name": 1, "role": 1, "created_at_ms": 1})
        return _caller(doc) if doc else None


def _caller(doc: dict[str, Any]) -> Caller:
    return Caller(str(doc["name"]), Role(doc.get("role", Role.operator.value)), int(doc.get("created_at_ms", 0)))


def bootstrap_digest(path: Path | None) -> str | None:
    """The bootstrap token's digest from its file (the token, or `sha256:<hex>`); None without a file.
    A named file that is missing or empty is an error: a deployment that meant to have one must say so."""
    if path is None:
        return None
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"control bootstrap token file {path} is empty")
    if text.startswith("sha256:"):
        return text.removeprefix("sha256:").lower()
    return api_key_digest(text)


class ControlCredentials:
    """A token's holder: the bootstrap administrator, or a stored token's, cached `ttl_s` per digest."""

    def __init__(
        self,
        holder: Callable[[str], Caller | None] | None,
        bootstrap: str | None = None,
        ttl_s: float = 5.0,
    ) -> None:
        self._holder = holder
        self._bootstrap = bootstrap
        self._cache: TtlCache[str, Caller | None] = TtlCache(ttl_s)

    def caller(self, token: str) -> Caller | None:
        digest = api_key_digest(token)
        if self._bootstrap is not None and hmac.compare_digest(digest, self._bootstrap):
            return Caller(BOOTSTRAP_NAME, Role.administrator)
        holder = self._holder
        if holder is None:
            return None
        return self._cache.get(digest, lambda: holder(digest))

    def forget(self) -> None:
        """Drop cached answers (a token was added or removed here; other replicas see it within ttl_s)."""
        self._cache.clear()

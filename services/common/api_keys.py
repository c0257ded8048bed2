"""API keys (senders' STOW-RS keys, analysts' audit keys): shown once when issued, stored only as SHA-256
digests, so a copy of the database grants nothing."""

from __future__ import annotations

import hashlib
import secrets


def issue_api_key(prefix: str) -> str:
    """A new key: `prefix` (says what it is for) and 32 random bytes, URL-safe."""
    return prefix + secrets.token_urlsafe(32)


def api_key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()

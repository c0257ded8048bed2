"""Analysts' API keys in MongoDB (FerretDB here): issued once, stored as digests, withdrawn at once."""

from __future__ import annotations

import pytest
from pymongo.database import Database

from services.audit.analysts import Analyst, AnalystStore, CachedKeyCheck
from services.common.api_keys import api_key_digest

pytestmark = pytest.mark.integration


def test_keys_are_issued_once_stored_as_digests_and_replaced_or_withdrawn(db: Database) -> None:
    store = AnalystStore(db)
    first = store.add(Analyst("ann", "Ann"))
    assert first.startswith("imx_audit_") and store.analyst_for_key(first) == "ann"
    assert first not in str(list(db["audit_analysts"].find())), "only the digest is stored"
    assert db["audit_analysts"].find_one({"_id": api_key_digest(first)}) is not None
    second = store.add(Analyst("ann", "Ann"))
    assert store.analyst_for_key(first) is None and store.analyst_for_key(second) == "ann", "a new key replaces"
    store.add(Analyst("bob"))
    assert [a.analyst_id for a in store.list()] == ["ann", "bob"]
    assert store.remove("ann") and not store.remove("ann")
    assert store.analyst_for_key(second) is None
    with pytest.raises(ValueError):
        store.add(Analyst("Not Valid"))


def test_the_cached_check_forgets_a_removed_analyst_after_its_ttl(db: Database) -> None:
    store = AnalystStore(db)
    key = store.add(Analyst("ann"))
    cached = CachedKeyCheck(store, ttl_s=60)
    assert cached(key) == "ann" and cached("imx_audit_wrong") is None
    store.remove("ann")
    assert cached(key) == "ann", "within the TTL the answer is remembered"
    assert CachedKeyCheck(store, ttl_s=0)(key) is None

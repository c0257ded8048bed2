"""The delivery stage's partner cache over MongoDB (FerretDB here): partners added and removed by
the administrator are seen without a restart."""

from __future__ import annotations

import pytest
from pymongo.database import Database

from services.common.stores.partners import Partner, PartnerStore
from services.delivery.partners import PartnerCache

pytestmark = pytest.mark.integration


def test_a_new_partner_is_known_at_once_and_a_removed_one_after_the_next_check(db: Database) -> None:
    admin = PartnerStore(db)
    cache = PartnerCache(PartnerStore(db), refresh_s=0.0)
    assert not cache.is_known("acme")
    admin.add(Partner("acme", "Acme"))
    assert cache.is_known("acme")
    assert admin.remove("acme")
    assert not cache.is_known("acme")


def test_within_the_refresh_interval_a_removed_partner_is_still_known(db: Database) -> None:
    admin = PartnerStore(db)
    admin.add(Partner("acme", "Acme"))
    cache = PartnerCache(PartnerStore(db), refresh_s=3600)
    assert cache.is_known("acme")
    admin.remove("acme")
    assert cache.is_known("acme")

"""The delivery stage's partner cache: a removed partner is dropped within one refresh interval, a
new one is seen at once, and a failed read is never taken for "unknown"."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect

from services.common.stores.partners import Partner
from services.delivery.partners import PartnerCache
from tests.unit.fake_config_store import Clock


class FakePartnerStore:
    def __init__(self, *partner_ids: str) -> None:
        self.ids, self.lists, self.down = list(partner_ids), 0, False

    def list(self) -> list[Partner]:
        if self.down:
            raise AutoReconnect("mongo down")
        self.lists += 1
        return [Partner(partner_id, partner_id) for partner_id in self.ids]


def test_known_partners_are_read_at_most_every_refresh_interval() -> None:
    store, clock = FakePartnerStore("p1"), Clock()
    cache = PartnerCache(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    assert cache.is_known("p1") and cache.is_known("p1") and store.lists == 1
    store.ids.remove("p1")
    clock.now += 1.9
    assert cache.is_known("p1"), "a removed partner is known until the next check"
    clock.now += 0.1
    assert not cache.is_known("p1") and store.lists == 2


def test_an_unknown_partner_is_checked_at_once_every_time() -> None:
    store, clock = FakePartnerStore("p1"), Clock()
    cache = PartnerCache(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    cache.is_known("p1")
    store.ids.append("p2")
    assert cache.is_known("p2") and store.lists == 2
    assert not cache.is_known("p3") and not cache.is_known("p3") and store.lists == 4


def test_a_failed_read_raises_and_the_next_call_reads_again() -> None:
    store, clock = FakePartnerStore("p1"), Clock()
    cache = PartnerCache(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    cache.is_known("p1")
    store.down = True
    clock.now += 2
    for _ in range(2):
        with pytest.raises(AutoReconnect):
            cache.is_known("p1")
    store.down = False
    assert cache.is_known("p1") and store.lists == 2

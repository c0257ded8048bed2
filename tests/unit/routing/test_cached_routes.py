"""The routing stage's cached routes: read at most every refresh interval, reloaded only when the
route counter moved, and never an empty table because MongoDB was away at the first read."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect

from services.routing.rules import Route
from services.routing.store import CachedRoutes
from tests.unit.fake_config_store import Clock, FakeConfigStore


def route_store(*routes: Route) -> FakeConfigStore[Route]:
    """The part of RouteStore the cache uses, counting reads."""
    return FakeConfigStore(routes, name=lambda route: route.route_id)


def test_routes_are_checked_at_most_every_refresh_interval_and_reloaded_only_on_change() -> None:
    store, clock = route_store(Route("r1", "p1")), Clock()
    cached = CachedRoutes(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    assert [r.route_id for r in cached.current()] == ["r1"]
    store.save(Route("r2", "p2"))
    clock.now += 1.9
    assert [r.route_id for r in cached.current()] == ["r1"]
    clock.now += 0.1
    assert [r.route_id for r in cached.current()] == ["r1", "r2"]
    clock.now += 10
    cached.current()
    assert store.lists == 2


def test_mongo_away_at_the_first_read_fails_the_attempt_instead_of_routing_with_no_routes() -> None:
    store, clock = route_store(Route("r1", "p1")), Clock()
    cached = CachedRoutes(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    store.down = True
    for _ in range(2):
        with pytest.raises(AutoReconnect):
            cached.current()  # every instance would be quarantined as no-route otherwise
    store.down = False
    assert [r.route_id for r in cached.current()] == ["r1"]


def test_mongo_away_later_keeps_the_routes_last_read() -> None:
    store, clock = route_store(Route("r1", "p1")), Clock()
    cached = CachedRoutes(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    cached.current()
    store.down = True
    clock.now += 5
    assert [r.route_id for r in cached.current()] == ["r1"]

"""Routes in MongoDB (FerretDB here), seen by another replica's cached view without a restart."""

from __future__ import annotations

import pytest
from pymongo.database import Database

from services.routing.rules import Route
from services.routing.store import CachedRoutes, RouteStore

pytestmark = pytest.mark.integration


def test_a_replica_sees_added_changed_and_removed_routes_on_its_next_check(db: Database) -> None:
    admin = RouteStore(db)
    cached = CachedRoutes(RouteStore(db), refresh_s=0.0)
    assert cached.current() == []
    admin.add(Route("r1", "p1", priority=20))
    admin.add(Route("r2", "p2", priority=10))
    assert [(r.route_id, r.version) for r in cached.current()] == [("r2", 1), ("r1", 1)]
    admin.add(Route("r1", "p1", priority=5))
    assert [(r.route_id, r.version) for r in cached.current()] == [("r1", 2), ("r2", 1)]
    assert admin.remove("r2")
    assert [r.route_id for r in cached.current()] == ["r1"]


def test_within_the_refresh_interval_a_replica_reads_nothing(db: Database) -> None:
    admin = RouteStore(db)
    admin.add(Route("r1", "p1"))
    cached = CachedRoutes(RouteStore(db), refresh_s=3600)
    assert [r.route_id for r in cached.current()] == ["r1"]
    admin.remove("r1")
    assert [r.route_id for r in cached.current()] == ["r1"]

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


def test_a_route_naming_a_partner_or_profile_not_there_yet_is_saved_with_a_warning(db: Database) -> None:
    """What such a route matches is quarantined (unknown partner, unknown profile) until they exist; the
    administrator hears so when saving it, not from the quarantine later."""
    from dataclasses import replace

    from services.common.stores.partners import Partner, PartnerStore
    from services.deid.engine import RESEARCH
    from services.deid.profile_store import ProfileStore
    from services.proto_gen.imx.v1 import admin_pb2
    from services.routing.admin import RoutingAdminServicer, route_to_proto

    servicer = RoutingAdminServicer(RouteStore(db))

    def add(route: Route) -> list[str]:
        reply = servicer.AddRoute(admin_pb2.AddRouteRequest(route=route_to_proto(route)), context=None)
        assert reply.route.route_id == route.route_id  # saved either way
        return list(reply.warnings)

    assert add(Route("r1", "stroke-net", profile="stroke-research")) == [
        "no partner 'stroke-net' yet: what this route matches is quarantined until it is added",
        "no profile 'stroke-research' yet: what this route matches is quarantined until it is added",
    ]
    PartnerStore(db).add(Partner("stroke-net"))
    assert add(Route("r1", "stroke-net", profile="stroke-research")) == [
        "no profile 'stroke-research' yet: what this route matches is quarantined until it is added"
    ]
    ProfileStore(db).add(replace(RESEARCH, name="stroke-research"))
    assert add(Route("r1", "stroke-net", profile="stroke-research")) == []
    assert add(Route("r2", "stroke-net", profile="research")) == []  # built in: never in MongoDB
    assert add(Route("r3", "stroke-net")) == []  # a care transfer names no profile


def test_a_route_to_a_removed_partner_is_said_to_stay_quarantined(db: Database) -> None:
    """A removed partner's id is never given again: "until it is added" promised what cannot happen."""
    from services.common.stores.partners import Partner, PartnerStore

    partners = PartnerStore(db)
    partners.add(Partner("old-lab"))
    partners.remove("old-lab")
    [warning] = RouteStore(db).unmet_references(Route("r1", "old-lab"))
    assert "was removed, and its id is never given again" in warning


def test_a_route_to_a_reserved_id_is_refused_unless_a_partner_took_it_before_it_was_reserved(db: Database) -> None:
    """No partner can be added as `admin` or `imx...`: such a route quarantined for ever, "until it is added".
    A partner given such an id before it was reserved keeps its routes."""
    admin = RouteStore(db)
    with pytest.raises(ValueError, match="reserved"):
        admin.add(Route("r1", "imx-delivery"))
    db["partners"].insert_one({"_id": "imxlab"})  # given before ids beginning imx were reserved
    assert admin.add(Route("r1", "imxlab")).version == 1


def test_a_route_written_by_hand_without_a_version_is_still_replaced(db: Database) -> None:
    db["routes"].insert_one({"_id": "r1", "partner_id": "p1"})
    RouteStore(db).add(Route("r1", "p2"))
    assert db["routes"].find_one({"_id": "r1"})["partner_id"] == "p2"  # type: ignore[index]


def test_of_two_changes_at_once_the_later_version_is_the_one_kept(db: Database) -> None:
    """The change given the lower version could write last: the older content routed, while the newer
    change had been acknowledged and recorded."""
    admin = RouteStore(db)
    admin.add(Route("r1", "p1"))
    # This change was given version 2; the other, given 3 just after, wrote first.
    given = admin._next_version("r1")
    admin.add(Route("r1", "p2"))
    admin._next_version = lambda _route_id: given  # type: ignore[method-assign]
    assert admin.add(Route("r1", "p3")).version == 2
    [stored] = admin.list()
    assert (stored.partner_id, stored.version) == ("p2", 3)


def test_a_removal_whose_announcement_failed_is_announced_by_its_retry(db: Database) -> None:
    """Deleted, then MongoDB failed before the change counter moved: the retry found nothing to delete
    and did not bump either, so every replica routed by the removed route until some other change."""
    admin = RouteStore(db)
    admin.add(Route("r1", "research-lab"))
    cached = CachedRoutes(RouteStore(db), refresh_s=0.0)
    assert [r.route_id for r in cached.current()] == ["r1"]
    db["routes"].delete_one({"_id": "r1"})  # the first RemoveRoute got this far
    assert not admin.remove("r1")  # the operator's retry: NOT_FOUND
    assert cached.current() == []


def test_a_routes_version_never_repeats_across_a_removal_and_counts_on_from_older_routes(db: Database) -> None:
    """Re-added after a removal, a route started again at version 1: change records then named two
    different contents by one version."""
    admin = RouteStore(db)
    assert [admin.add(Route("r1", "p1")).version for _ in range(2)] == [1, 2]
    admin.remove("r1")
    assert admin.add(Route("r1", "p2", profile="research")).version == 3
    db["routes"].insert_one({"_id": "old", "partner_id": "p1", "version": 7})  # saved before the counter
    assert admin.add(Route("old", "p1")).version == 8


def test_an_unreadable_route_is_skipped_not_every_instance_dead_lettered(db: Database) -> None:
    admin = RouteStore(db)
    admin.add(Route("good", "p1"))
    db["routes"].insert_one({"_id": "no-partner", "priority": 1})
    db["routes"].insert_one({"_id": "bad-class", "partner_id": "p2", "priority_class": "asap"})
    db["routes"].insert_one({"_id": "bad-priority", "partner_id": "p3", "priority": "high"})
    assert [r.route_id for r in CachedRoutes(RouteStore(db), refresh_s=0.0).current()] == ["good"]

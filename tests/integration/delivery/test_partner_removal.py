"""A removed partner's id is not given again, and its deliveries are owed no longer (MongoDB-wire server
here). Before, adding the id again issued a new key and Kafka grant for it: the new holder listed and
fetched everything delivered under the old registration, with the old feed's signed references too, and
the removed partner's objects were kept for ever."""

from __future__ import annotations

import grpc
import pytest
from pymongo.database import Database

from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, DeliveredObjects
from services.delivery.partners import PartnerAdminServicer
from services.proto_gen.imx.v1 import admin_pb2

pytestmark = pytest.mark.integration


class Aborted(Exception):
    pass


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def _delivery(partner: str, n: int) -> DeliveredInstance:
    return DeliveredInstance(
        partner, "2.25.1", "2.25.1.1", f"2.25.1.1.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
        f"{partner[:2]}{n:062x}", 100, f"d-{partner}-{n}",
    )  # fmt: skip


def test_a_removed_partners_id_is_not_given_again_and_it_is_owed_nothing(db: Database) -> None:
    store = PartnerStore(db)
    admin = PartnerAdminServicer(store, Topics("t."), create_topic=lambda _partner: None)
    add = admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-old", name="Old lab"))
    assert admin.AddPartner(add, Context()).dicomweb_key  # type: ignore[arg-type]
    store.add(Partner("lab-kept"))
    delivered = DeliveredObjects(db)
    delivered.record([_delivery("lab-old", 1), _delivery("lab-kept", 2)])
    assert delivered.unstored_blobs() == {_delivery("lab-old", 1).sha256, _delivery("lab-kept", 2).sha256}

    assert store.remove("lab-old") and store.retired("lab-old")
    assert delivered.unstored_blobs() == {_delivery("lab-kept", 2).sha256}

    context = Context()
    with pytest.raises(Aborted):
        admin.AddPartner(add, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.FAILED_PRECONDITION and "not given again" in context.details
    assert store.get("lab-old") is None and not store.has_own_key("lab-old")
    other = admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-new"))
    assert admin.AddPartner(other, Context()).dicomweb_key  # type: ignore[arg-type]
    assert not store.retired("lab-new")
    store.add(Partner("lab-new", "renamed"))  # an existing partner is updated as before


def test_a_partner_removed_before_ids_were_retired_is_found_by_its_deliveries_when_its_id_is_asked_for(
    db: Database,
) -> None:
    store = PartnerStore(db)
    delivered = DeliveredObjects(db)
    store.add(Partner("lab-kept"))
    # "lab-gone" was removed before removals retired ids: its deliveries are left, no partner, no retirement.
    delivered.record([_delivery("lab-gone", 1), _delivery("lab-kept", 2)])
    assert not store.retired("lab-gone")

    admin = PartnerAdminServicer(store, Topics("t."), lambda _partner: None, delivered_to=delivered.delivered_to)
    context = Context()
    with pytest.raises(Aborted):
        admin.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-gone")), context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.FAILED_PRECONDITION and store.get("lab-gone") is None

    assert store.retired("lab-gone") and not store.retired("lab-kept")
    assert delivered.unstored_blobs() == {_delivery("lab-kept", 2).sha256}  # the old partner is owed nothing

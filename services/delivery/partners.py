"""The delivery stage's cached view of partners, and the PartnerAdmin gRPC servicer."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from services.common.control_server import ServicerRegistration
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc


class PartnerCache:
    """Known partner ids, re-read at most every `refresh_s` seconds (a removed partner stops receiving
    within that time; a new one is seen at once because misses are re-checked)."""

    def __init__(self, store: PartnerStore, refresh_s: float = 2.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._known: set[str] = set()
        self._loaded_at = 0.0

    def is_known(self, partner_id: str) -> bool:
        now = time.monotonic()
        if now - self._loaded_at >= self._refresh_s or partner_id not in self._known:
            self._known = {p.partner_id for p in self._store.list()}
            self._loaded_at = now
        return partner_id in self._known


class PartnerAdminServicer(admin_pb2_grpc.PartnerAdminServicer):
    def __init__(self, store: PartnerStore, topics: Topics, create_topic: Callable[[str], None]) -> None:
        self._store = store
        self._topics = topics
        self._create_topic = create_topic

    def _proto(self, partner: Partner) -> admin_pb2.Partner:
        return admin_pb2.Partner(
            partner_id=partner.partner_id, name=partner.name, topic=self._topics.partner(partner.partner_id)
        )

    def AddPartner(
        self, request: admin_pb2.AddPartnerRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddPartnerReply:
        try:
            partner = self._store.add(Partner(request.partner.partner_id, request.partner.name))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # The topic exists before anything is delivered, so a partner can subscribe right away.
        self._create_topic(partner.partner_id)
        return admin_pb2.AddPartnerReply(partner=self._proto(partner))

    def ListPartners(
        self, request: admin_pb2.ListPartnersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListPartnersReply:
        return admin_pb2.ListPartnersReply(partners=[self._proto(p) for p in self._store.list()])

    def RemovePartner(
        self, request: admin_pb2.RemovePartnerRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemovePartnerReply:
        if not self._store.remove(request.partner_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no partner {request.partner_id!r}")
        return admin_pb2.RemovePartnerReply(removed=True)


def register_partner_admin(
    store: PartnerStore, topics: Topics, create_topic: Callable[[str], None]
) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_PartnerAdminServicer_to_server(PartnerAdminServicer(store, topics, create_topic), server)

    return register

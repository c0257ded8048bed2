"""The delivery stage's cached view of partners, and the PartnerAdmin gRPC servicer (which also issues and
revokes each partner's Kafka sign-in, services/common/kafka_access.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from kafka.errors import KafkaError

from services.common.control_server import ServicerRegistration
from services.common.events import now_ms
from services.common.kafka_access import MECHANISM, PartnerAccess
from services.common.messages import shown
from services.common.stores.partners import Partner, PartnerStore, validate_partner
from services.common.topics import Topics, validate_new_partner_id
from services.common.ttl_cache import RefreshingSnapshot
from services.delivery.retention_watch import PartnerLag
from services.gateway.targets import parse_target
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)


class PartnerCache:
    """Known partner ids, re-read at most every `refresh_s` seconds (a removed partner stops receiving
    within that time; a new one is seen at once because misses are re-checked). A failed read raises
    and the next call reads again."""

    def __init__(
        self, store: PartnerStore, refresh_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._known = RefreshingSnapshot(
            lambda _previous: frozenset(p.partner_id for p in store.list()), refresh_s, name="partners", clock=clock
        )

    def is_known(self, partner_id: str) -> bool:
        return partner_id in self._known.get(reload_if=lambda known: partner_id not in known)


@dataclass(frozen=True)
class PartnerSignIn:
    """Where and how partners sign in to Kafka; `access` grants and revokes their users."""

    access: PartnerAccess
    bootstrap: str
    security_protocol: str = "SASL_PLAINTEXT"

    def issue(self, partner_id: str, topic: str, receipts_topic: str) -> admin_pb2.PartnerKafkaAccess:
        credentials = self.access.grant(partner_id, topic, receipts_topic)
        return admin_pb2.PartnerKafkaAccess(
            bootstrap=self.bootstrap,
            security_protocol=self.security_protocol,
            mechanism=MECHANISM,
            username=credentials.username,
            password=credentials.password,
            group_prefix=credentials.group_prefix,
        )


class PartnerAdminServicer(admin_pb2_grpc.PartnerAdminServicer):
    def __init__(
        self,
        store: PartnerStore,
        topics: Topics,
        create_topic: Callable[[str], None],
        sign_in: PartnerSignIn | None = None,
        lags: Callable[[], dict[str, PartnerLag]] = dict,
        delivered_to: Callable[[str], bool] = lambda _partner_id: False,
    ) -> None:
        """`delivered_to`: whether anything was delivered under an id (one not registered and with
        deliveries belonged to a partner removed before ids were retired: not given again either; nothing
        else can tell such an id, so it is found when someone asks for it)."""
        self._store = store
        self._delivered_to = delivered_to
        self._topics = topics
        self._create_topic = create_topic
        self._sign_in = sign_in
        self._lags = lags

    def _issue(self, partner_id: str, context: grpc.ServicerContext) -> admin_pb2.PartnerKafkaAccess | None:
        if self._sign_in is None:
            return None
        try:
            return self._sign_in.issue(partner_id, self._topics.partner(partner_id), self._topics.receipts(partner_id))
        except (KafkaError, RuntimeError) as error:
            log.warning("partner sign-in not issued", extra={"partner": partner_id, "error": type(error).__name__})
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"partner {partner_id!r} is saved but its Kafka sign-in could not be issued ({type(error).__name__}); "
                "retry with `imx partners reset-password`",
            )
            return None  # abort raised; for the type checker

    def _refuse_unavailable_id(self, partner_id: str, context: grpc.ServicerContext) -> None:
        """Aborts the call when a new partner may not have this id: one of the system's own Kafka names,
        a removed partner's, or a Kafka user's already."""
        try:
            validate_new_partner_id(partner_id)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._retired(partner_id):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"partner id {partner_id!r} belonged to a partner since removed and is not given again (its "
                "deliveries, feed references and topics would pass to the new holder): choose another id",
            )
        if self._user_taken(partner_id, context):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Kafka already has a user named {partner_id!r} (a service's, an administrator's or one made "
                "outside imx): a partner given that id would take over its password and access; choose another id",
            )

    def _user_taken(self, partner_id: str, context: grpc.ServicerContext) -> bool:
        """Whether a new partner's id already names a Kafka user (never, without partner sign-ins)."""
        if self._sign_in is None:
            return False
        try:
            return self._sign_in.access.user_exists(partner_id)
        except KafkaError as error:
            log.warning("Kafka users not listed", extra={"partner": partner_id, "error": type(error).__name__})
            context.abort(grpc.StatusCode.UNAVAILABLE, "the broker did not answer whether the id is free; try again")
            return True  # abort raised; for the type checker

    def _retired(self, partner_id: str) -> bool:
        """Whether an id no partner has was a removed partner's: retired, or with deliveries under it (a
        partner removed before removals retired ids: retired now, its objects no longer kept for it)."""
        if self._store.retired(partner_id):
            return True
        if not self._delivered_to(partner_id):
            return False
        self._store.retire(partner_id)
        return True

    def _proto(self, partner: Partner) -> admin_pb2.Partner:
        return admin_pb2.Partner(
            partner_id=partner.partner_id,
            name=partner.name,
            topic=self._topics.partner(partner.partner_id),
            endpoint=partner.endpoint,
        )

    def AddPartner(
        self, request: admin_pb2.AddPartnerRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddPartnerReply:
        endpoint = request.partner.endpoint.strip()
        partner_id = request.partner.partner_id
        try:
            validate_partner(Partner(partner_id, request.partner.name, endpoint))
            if endpoint:
                parse_target(endpoint)  # the central gateway must be able to use it: refuse it now if not
        except ValueError as exc:  # TargetError is a ValueError
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        registered = self._store.get(partner_id) is not None
        if not registered:
            self._refuse_unavailable_id(partner_id, context)
        # Registered and given its key: an add that stopped before its credentials (its Kafka sign-in not
        # issued, say) left none, and adding it again issues them instead of reporting them "kept".
        existed = registered and self._store.has_own_key(partner_id)
        # The topics exist before anything is delivered, so a partner can subscribe right away; made first,
        # so a broker that is away leaves nothing half made (UNAVAILABLE, and adding it again is safe).
        self._create_topic(partner_id)
        partner = self._store.add(Partner(partner_id, request.partner.name, endpoint))
        if existed:
            # Its credentials are kept: new ones here locked its running gateway out (the Reset calls rotate).
            return admin_pb2.AddPartnerReply(partner=self._proto(partner), updated=True)
        dicomweb_key = self._store.issue_dicomweb_key(partner.partner_id)
        access = self._issue(partner.partner_id, context)  # the key is issued first: an abort here leaves it
        return admin_pb2.AddPartnerReply(partner=self._proto(partner), kafka_access=access, dicomweb_key=dicomweb_key)

    def ResetPartnerDicomwebKey(
        self, request: admin_pb2.ResetPartnerDicomwebKeyRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ResetPartnerDicomwebKeyReply:
        if self._store.get(request.partner_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no partner {shown(request.partner_id)}")
        return admin_pb2.ResetPartnerDicomwebKeyReply(dicomweb_key=self._store.issue_dicomweb_key(request.partner_id))

    def ResetPartnerPassword(
        self, request: admin_pb2.ResetPartnerPasswordRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ResetPartnerPasswordReply:
        if self._sign_in is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this deployment issues no Kafka sign-in to partners")
        if request.partner_id not in {p.partner_id for p in self._store.list()}:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no partner {shown(request.partner_id)}")
        return admin_pb2.ResetPartnerPasswordReply(kafka_access=self._issue(request.partner_id, context))

    def ListPartners(
        self, request: admin_pb2.ListPartnersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListPartnersReply:
        return admin_pb2.ListPartnersReply(partners=[self._proto(p) for p in self._store.list()])

    def PartnerLag(
        self, request: admin_pb2.PartnerLagRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PartnerLagReply:
        now = now_ms()
        return admin_pb2.PartnerLagReply(partners=[backlog_proto(lag, now) for _, lag in sorted(self._lags().items())])

    def RemovePartner(
        self, request: admin_pb2.RemovePartnerRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemovePartnerReply:
        if not self._store.remove(request.partner_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no partner {shown(request.partner_id)}")
        if self._sign_in is not None:
            try:
                self._sign_in.access.revoke(request.partner_id)
            except (KafkaError, RuntimeError) as error:
                log.warning(
                    "partner sign-in not revoked", extra={"partner": request.partner_id, "error": type(error).__name__}
                )
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"partner {shown(request.partner_id)} removed, but its Kafka sign-in could not be revoked "
                    f"({type(error).__name__}): revoke it on the broker",
                )
        return admin_pb2.RemovePartnerReply(removed=True)


def backlog_proto(lag: PartnerLag, checked_at_ms: int) -> admin_pb2.PartnerBacklog:
    return admin_pb2.PartnerBacklog(
        partner_id=lag.partner_id,
        unread=lag.unread,
        oldest_unread_age_ms=lag.oldest_unread_age_ms(checked_at_ms),
        retention_ms=lag.retention_ms,
        retention_used=round(lag.fraction(checked_at_ms), 4),
        expired=lag.expired,
        checked_at_ms=checked_at_ms,
    )


def register_partner_admin(
    store: PartnerStore,
    topics: Topics,
    create_topic: Callable[[str], None],
    sign_in: PartnerSignIn | None = None,
    lags: Callable[[], dict[str, PartnerLag]] = dict,
    delivered_to: Callable[[str], bool] = lambda _partner_id: False,
) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        servicer = PartnerAdminServicer(store, topics, create_topic, sign_in, lags, delivered_to)
        admin_pb2_grpc.add_PartnerAdminServicer_to_server(servicer, server)

    return register

"""The Studies gRPC servicer: how far a study got for each partner (`imx studies status UID`).

The answer is the study's trail (services/audit/trail.py) in the shape of
`imx.v1.StudyStatusReply`: per destination the furthest state reached, the counts behind it and
the reasons instances stopped short. Nothing here reads more than the trail does."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

import grpc

from services.audit.models import Destination, StageReason, StudyTrail
from services.audit.records import to_epoch_ms
from services.audit.store import AuditStore
from services.audit.trail import build_trail
from services.common.control_server import ServicerRegistration
from services.common.messages import TransientError
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*\Z")  # PS3.5 9.1: digits and dots, at most 64 characters


def _reasons(reasons: Iterable[StageReason]) -> list[admin_pb2.StatusReason]:
    return [admin_pb2.StatusReason(stage=r.stage or "", reason=r.reason or "", count=r.count) for r in reasons]


def _ms(moment: datetime | None) -> int:
    return to_epoch_ms(moment) if moment is not None else 0


def partner_status(d: Destination) -> admin_pb2.PartnerStudyStatus:
    return admin_pb2.PartnerStudyStatus(
        partner_id=d.partner_id or "",
        route_id=d.route_id or "",
        state=d.state,
        routed=d.routed,
        prepared=d.prepared,
        delivered=d.delivered,
        stored=d.stored,
        quarantined=d.quarantined,
        failed=d.failed,
        dead_lettered=d.dead_lettered,
        completeness=d.completeness or "",
        missing=d.missing or 0,
        reasons=_reasons(d.reasons),
        last_stored_at_ms=_ms(d.last_stored_at),
        turnaround_ms_p50=d.turnaround_ms_p50 or 0,
        turnaround_ms_max=d.turnaround_ms_max or 0,
    )


def status_reply(study_uid: str, trail: StudyTrail | None) -> admin_pb2.StudyStatusReply:
    if trail is None:
        return admin_pb2.StudyStatusReply(study_instance_uid=study_uid, found=False)
    return admin_pb2.StudyStatusReply(
        study_instance_uid=study_uid,
        found=True,
        instances=trail.instances,
        partners=[
            partner_status(d) for d in sorted(trail.destinations, key=lambda d: (d.partner_id or "", d.route_id or ""))
        ],
        quarantined=_reasons(trail.quarantined),
        dead_letters=_reasons(trail.dead_letters),
    )


class StudiesServicer(admin_pb2_grpc.StudiesServicer):
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    def StudyStatus(
        self, request: admin_pb2.StudyStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.StudyStatusReply:
        uid = request.study_instance_uid
        if len(uid) > 64 or not _UID.match(uid):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "study_instance_uid is not a UID (digits and dots)")
        try:
            records = self._store.study_trail(uid)
        except TransientError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return status_reply(uid, build_trail(uid, records))


def register_studies(store: AuditStore) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_StudiesServicer_to_server(StudiesServicer(store), server)

    return register

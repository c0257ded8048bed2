"""The AnalystAdmin gRPC servicer: who may query the audit API (services/audit/analysts.py)."""

from __future__ import annotations

import grpc

from services.audit.analysts import Analyst, AnalystStore
from services.audit.scopes import Scope
from services.common.control_server import ServicerRegistration
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc


class AnalystAdminServicer(admin_pb2_grpc.AnalystAdminServicer):
    def __init__(self, store: AnalystStore) -> None:
        self._store = store

    def AddAnalyst(
        self, request: admin_pb2.AddAnalystRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddAnalystReply:
        try:
            analyst = Analyst(request.analyst.analyst_id, request.analyst.name, Scope.parse(request.analyst.scope))
            api_key = self._store.add(analyst)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return admin_pb2.AddAnalystReply(analyst=_message(analyst), api_key=api_key)

    def ListAnalysts(
        self, request: admin_pb2.ListAnalystsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListAnalystsReply:
        return admin_pb2.ListAnalystsReply(analysts=[_message(a) for a in self._store.list()])

    def RemoveAnalyst(
        self, request: admin_pb2.RemoveAnalystRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemoveAnalystReply:
        if not self._store.remove(request.analyst_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no analyst {request.analyst_id!r}")
        return admin_pb2.RemoveAnalystReply(removed=True)


def _message(analyst: Analyst) -> admin_pb2.Analyst:
    return admin_pb2.Analyst(analyst_id=analyst.analyst_id, name=analyst.name, scope=str(analyst.scope))


def register_analyst_admin(store: AnalystStore) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_AnalystAdminServicer_to_server(AnalystAdminServicer(store), server)

    return register

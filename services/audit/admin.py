"""The AnalystAdmin gRPC servicer: who may query the audit API (services/audit/analysts.py); and
ControlTokenAdmin: who may call the services' control and admin APIs."""

from __future__ import annotations

import grpc

from services.audit.analysts import Analyst, AnalystStore
from services.audit.scopes import Scope
from services.common.control_roles import Role
from services.common.control_server import ServicerRegistration
from services.common.control_tokens import ControlCredentials, TokenStore
from services.common.messages import shown
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
            context.abort(grpc.StatusCode.NOT_FOUND, f"no analyst {shown(request.analyst_id)}")
        return admin_pb2.RemoveAnalystReply(removed=True)


def _message(analyst: Analyst) -> admin_pb2.Analyst:
    return admin_pb2.Analyst(analyst_id=analyst.analyst_id, name=analyst.name, scope=str(analyst.scope))


def register_analyst_admin(store: AnalystStore) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_AnalystAdminServicer_to_server(AnalystAdminServicer(store), server)

    return register


class ControlTokenAdminServicer(admin_pb2_grpc.ControlTokenAdminServicer):
    """Tokens for the gRPC control plane (services/common/control_tokens.py); shown once when issued."""

    def __init__(self, store: TokenStore, credentials: ControlCredentials) -> None:
        self._store = store
        self._credentials = credentials

    def AddControlToken(
        self, request: admin_pb2.AddControlTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddControlTokenReply:
        try:
            role = Role(request.token.role or Role.operator.value)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "role must be operator or administrator")
        try:
            token = self._store.add(request.token.name, role)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self._credentials.forget()
        return admin_pb2.AddControlTokenReply(
            token=admin_pb2.ControlToken(name=request.token.name, role=role.value), token_value=token
        )

    def ListControlTokens(
        self, request: admin_pb2.ListControlTokensRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListControlTokensReply:
        return admin_pb2.ListControlTokensReply(
            tokens=[
                admin_pb2.ControlToken(name=c.name, role=c.role.value, created_at_ms=c.created_at_ms)
                for c in self._store.list()
            ]
        )

    def RemoveControlToken(
        self, request: admin_pb2.RemoveControlTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemoveControlTokenReply:
        if not self._store.remove(request.name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no control token named {shown(request.name)}")
        self._credentials.forget()
        return admin_pb2.RemoveControlTokenReply(removed=True)


def register_control_token_admin(store: TokenStore, credentials: ControlCredentials) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_ControlTokenAdminServicer_to_server(ControlTokenAdminServicer(store, credentials), server)

    return register

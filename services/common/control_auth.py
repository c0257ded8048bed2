"""The control plane's credentials check: one gRPC server interceptor every service's ControlServer
installs.

grpc.health.v1 stays open (probes carry no credential). Every other method needs
`authorization: Bearer <token>` (services/common/control_tokens.py) whose role permits it
(services/common/control_roles.py): UNAUTHENTICATED without a token or with an unknown one,
PERMISSION_DENIED when the role does not permit the method. A method that changes something
(services/common/control_changes.py) is recorded with who called it, the object's version before and
after, and its outcome. Tokens never reach a log or a record; only the holder's name does.

The check runs in the handler, on the server's worker threads: gRPC looks handlers up on its single
polling thread, which a MongoDB read must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from pymongo.database import Database

from services.common.api_keys import api_key_digest
from services.common.control_changes import (
    CHANGES,
    SERVICE_KIND,
    ChangeLog,
    ChangeRecord,
    ChangeTarget,
    MemoryChangeLog,
    MongoChangeLog,
    VersionSources,
    read_version,
)
from services.common.control_roles import Role, is_open, permits
from services.common.control_tokens import Caller, ControlCredentials, TokenStore, bootstrap_digest
from services.common.failures import is_transient

log = logging.getLogger(__name__)
BEARER = "bearer "


@dataclass(frozen=True)
class ControlAuth:
    """What the interceptor needs: who holds a token, where changes are recorded, where versions live."""

    credentials: ControlCredentials
    changes: ChangeLog = field(default_factory=MemoryChangeLog)
    db: Database | None = None


def control_auth(db: Database, bootstrap_token_file: Path | None) -> ControlAuth:
    """The deployment's: tokens and change records in `db`, plus the bootstrap administrator's file."""
    store = TokenStore(db)
    return ControlAuth(ControlCredentials(store.holder, bootstrap_digest(bootstrap_token_file)), MongoChangeLog(db), db)


def static_auth(tokens: dict[str, Role], changes: ChangeLog | None = None, db: Database | None = None) -> ControlAuth:
    """Fixed tokens (token → role, named after their role): for tests and tools that own their server."""
    by_digest = {api_key_digest(token): Caller(role.value, role) for token, role in tokens.items()}
    return ControlAuth(ControlCredentials(by_digest.get, ttl_s=0), changes or MemoryChangeLog(), db)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[: len(BEARER)].lower() == BEARER:
            return value[len(BEARER) :].strip() or None
    return None


class ControlAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, auth: ControlAuth, service: str, paused: Callable[[], bool]) -> None:
        self._auth = auth
        self._service = service
        self._sources = VersionSources(auth.db, paused)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = continuation(handler_call_details)
        if is_open(method) or handler is None:
            return handler
        if handler.unary_unary is None:
            # Every imx control method is unary; a streaming one would need its own wrapper.
            return grpc.unary_unary_rpc_method_handler(_refuse_streaming)
        inner = handler.unary_unary

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            caller = self._caller(context)
            if caller is None:
                _abort(context, grpc.StatusCode.UNAUTHENTICATED, "a valid control token is required (Bearer)")
            if not permits(caller.role, method):
                refused(request, caller, grpc.StatusCode.PERMISSION_DENIED)
                _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the administrator role")
            if request is UNREADABLE:
                refused(request, caller, grpc.StatusCode.INVALID_ARGUMENT)
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the request could not be decoded")
            try:
                return recorded(request, context, caller)
            except Exception as error:
                if not dependency_away(error):
                    raise
                # Not UNKNOWN with pymongo's text (addresses, the cluster's topology) and a traceback per call.
                log.warning(
                    "control call failed: a dependency is unavailable",
                    extra={"service": self._service, "method": method, "error": type(error).__name__},
                )
                _abort(context, grpc.StatusCode.UNAVAILABLE, DEPENDENCY_AWAY)

        def refused(request: Any, caller: Caller, code: grpc.StatusCode) -> None:
            """A change a known caller may not make, or sent undecodable, is recorded too (its outcome the
            code, nothing read or changed): who tried what is what the record is for."""
            target = CHANGES.get(method)
            if target is not None:
                self._record(change(target, caller, changed_object(target, request), "", "", code.name))

        def changed_object(target: ChangeTarget, request: Any) -> str:
            """The id the request names; the service itself for pause and resume. A request naming no
            object (RemovePartner("")) is recorded as naming none, not as naming this service."""
            if target.kind == SERVICE_KIND:
                return self._service
            return target.object_id(request) if request is not UNREADABLE else ""

        def change(
            target: ChangeTarget, caller: Caller, object_id: str, before: str, after: str, outcome: str
        ) -> ChangeRecord:
            return ChangeRecord(
                who=caller.name,
                role=caller.role.value,
                service=self._service,
                method=method,
                object_kind=target.kind,
                object_id=object_id,
                before=before,
                after=after,
                outcome=outcome,
                event_id=target.event_id,
                event_type=target.event_type,
            )

        def recorded(request: Any, context: grpc.ServicerContext, caller: Caller) -> Any:
            target = CHANGES.get(method)
            if target is None:
                return inner(request, context)
            object_id = changed_object(target, request)
            before = read_version(target, self._sources, object_id)
            outcome = "OK"
            try:
                return inner(request, context)
            except Exception:
                code = context.code()
                outcome = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                after = read_version(target, self._sources, object_id)
                self._record(change(target, caller, object_id, before, after, outcome))

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _caller(self, context: grpc.ServicerContext) -> Caller | None:
        token = bearer_token(context.invocation_metadata())
        if token is None:
            return None
        try:
            return self._auth.credentials.caller(token)
        except Exception as error:  # the token store away: say so, never which token
            log.warning("control token check failed", extra={"service": self._service, "error": type(error).__name__})
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the control token store is unavailable; try again")

    def _record(self, change: ChangeRecord) -> None:
        try:
            self._auth.changes.record(change)
        except Exception as error:  # the change is made; its record's loss is logged loudly
            log.error(
                "control change not recorded",
                extra={"service": self._service, "stage": change.method, "error": type(error).__name__},
            )


UNREADABLE = object()  # a request its message type could not decode


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpcio answers a request it cannot decode INTERNAL and logs "Exception deserializing request!" with a
    traceback, before any token is looked at: here it is answered INVALID_ARGUMENT after the token check."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return UNREADABLE

    return deserialize


DEPENDENCY_AWAY = "the service's database or broker is unavailable; try again"


def dependency_away(error: BaseException) -> bool:
    """MongoDB not answering or its backend away (failures.is_transient: no server, a timeout, FerretDB's
    PostgreSQL restarting), a broker away (kafka-python's retriable errors), or a store's own TransientError:
    what a later call may not meet, not a fault of the request (not a duplicate key or a refused operation)."""
    return is_transient(error)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("ServicerContext.abort raises")


def _refuse_streaming(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "streaming control methods are not served")

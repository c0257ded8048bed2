"""A control call whose service cannot reach MongoDB is answered UNAVAILABLE with a short reason, not
UNKNOWN with pymongo's text (the database's address and topology) and a traceback logged for each call."""

from __future__ import annotations

import logging

import grpc
import pytest
from pymongo import MongoClient

from services.common.control_auth import DEPENDENCY_AWAY, static_auth
from services.common.control_changes import MemoryChangeLog
from services.common.control_channel import control_channel
from services.common.control_roles import Role
from services.common.control_server import ControlServer
from services.common.runtime import StageControl
from services.common.stats import StageStats
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from services.routing.admin import register_routing_admin
from services.routing.store import RouteStore
from tools.devstack import free_port

TOKEN = "imx_ctl_dependency_away_test"


def test_a_database_that_does_not_answer_is_unavailable_not_unknown(caplog: pytest.LogCaptureFixture) -> None:
    away = MongoClient(f"mongodb://127.0.0.1:{free_port()}/", serverSelectionTimeoutMS=300, connect=False)
    server = ControlServer(
        "routing",
        StageControl(StageStats("routing")),
        extra=[register_routing_admin(RouteStore(away["imx"]))],
        auth=static_auth({TOKEN: Role.administrator}),
    )
    server.start()
    caplog.set_level(logging.INFO)
    try:
        with control_channel(f"127.0.0.1:{server.port}", TOKEN) as channel, pytest.raises(grpc.RpcError) as raised:
            admin_pb2_grpc.RoutingAdminStub(channel).ListRoutes(admin_pb2.ListRoutesRequest(), timeout=30)
    finally:
        server.stop(0)
        away.close()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == DEPENDENCY_AWAY
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a database that is away"
    said = [r for r in caplog.records if r.getMessage() == "control call failed: a dependency is unavailable"]
    assert said and getattr(said[0], "error", "") == "ServerSelectionTimeoutError"


def test_a_request_that_cannot_be_decoded_is_invalid_not_internal(caplog: pytest.LogCaptureFixture) -> None:
    """grpcio answered INTERNAL and logged "Exception deserializing request!" with a traceback. The
    attempt is recorded as a refused change, as one the caller may not make is."""
    changes = MemoryChangeLog()
    server = ControlServer(
        "routing",
        StageControl(StageStats("routing")),
        extra=[register_routing_admin(RouteStore(MongoClient(connect=False)["imx"]))],
        auth=static_auth({TOKEN: Role.administrator}, changes),
    )
    server.start()
    caplog.set_level(logging.INFO)
    try:
        with control_channel(f"127.0.0.1:{server.port}", TOKEN) as channel:
            raw = channel.unary_unary("/imx.v1.RoutingAdmin/AddRoute")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as raised:
                raw(b"\xff\xff\xff\xff", timeout=10)
    finally:
        server.stop(0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [(c.who, c.method, c.object_id, c.outcome) for c in changes.changes] == [
        ("administrator", "/imx.v1.RoutingAdmin/AddRoute", "", "INVALID_ARGUMENT")
    ]

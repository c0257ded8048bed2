"""The authenticated control plane over a real gRPC socket, tokens and change records in FerretDB: a
ControlServer as routing runs it (Control, RoutingAdmin) plus audit's ControlTokenAdmin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo.database import Database

from services.audit.admin import register_control_token_admin
from services.audit.analysts import Analyst
from services.audit.api import create_app
from services.audit.scopes import Scope
from services.audit.store import MongoAuditStore
from services.common.control_auth import control_auth
from services.common.control_changes import MongoChangeLog
from services.common.control_channel import control_channel
from services.common.control_server import ControlServer
from services.common.control_tokens import TokenStore
from services.common.runtime import StageControl
from services.common.stats import StageStats
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, control_pb2, control_pb2_grpc
from services.routing.admin import register_routing_admin
from services.routing.store import RouteStore

BOOTSTRAP = "imx_ctl_bootstrap_for_this_test"


@dataclass
class Served:
    address: str
    stats: StageStats
    changes: MongoChangeLog
    server: ControlServer


@pytest.fixture
def served(db: Database, tmp_path: Path) -> Iterator[Served]:
    bootstrap = tmp_path / "control-token"
    bootstrap.write_text(BOOTSTRAP + "\n")
    auth = control_auth(db, bootstrap)
    stats = StageStats("routing")
    server = ControlServer(
        "routing",
        StageControl(stats),
        port=0,
        extra=[register_routing_admin(RouteStore(db)), register_control_token_admin(TokenStore(db), auth.credentials)],
        auth=auth,
    )
    server.start()
    try:
        yield Served(f"127.0.0.1:{server.port}", stats, MongoChangeLog(db), server)
    finally:
        server.stop(0)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    code: grpc.StatusCode = raised.value.code()
    return code


def _route(version_hint: str = "") -> admin_pb2.AddRouteRequest:
    return admin_pb2.AddRouteRequest(
        route=admin_pb2.Route(route_id="research", name=version_hint, partner_id="lab", enabled=True)
    )


def _issue(address: str, name: str, role: str, token: str = BOOTSTRAP) -> str:
    with control_channel(address, token) as channel:
        reply = admin_pb2_grpc.ControlTokenAdminStub(channel).AddControlToken(
            admin_pb2.AddControlTokenRequest(token=admin_pb2.ControlToken(name=name, role=role)), timeout=10
        )
    assert reply.token.role == role and reply.token_value.startswith("imx_ctl_")
    return reply.token_value


def test_health_is_open_and_everything_else_needs_a_known_token(served: Served) -> None:
    served.server.mark_serving()
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        control = control_pb2_grpc.ControlStub(channel)
        assert _code(lambda: control.Status(control_pb2.StatusRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        assert _code(lambda: routes.AddRoute(_route(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    with control_channel(served.address, "imx_ctl_not_issued") as channel:
        control = control_pb2_grpc.ControlStub(channel)
        assert _code(lambda: control.Status(control_pb2.StatusRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    assert served.changes.recent() == [], "refused calls change nothing and are not changes"


def test_an_operator_pauses_and_resumes_but_may_not_change_configuration(served: Served) -> None:
    operator = _issue(served.address, "night-shift", "operator")
    with control_channel(served.address, operator) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        assert control.Status(control_pb2.StatusRequest(), timeout=10).service == "routing"
        assert control.Pause(control_pb2.PauseRequest(), timeout=10).paused and served.stats.paused
        assert not control.Resume(control_pb2.ResumeRequest(), timeout=10).paused
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        assert _code(lambda: routes.AddRoute(_route(), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: routes.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        tokens = admin_pb2_grpc.ControlTokenAdminStub(channel)
        request = admin_pb2.AddControlTokenRequest(token=admin_pb2.ControlToken(name="me", role="administrator"))
        assert _code(lambda: tokens.AddControlToken(request, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED

    changes = list(reversed(served.changes.recent()))
    # The changes it may not make are recorded too, refused (before, nothing was: who tried is the point).
    assert [(c["who"], c["method"].rsplit("/", 1)[1], c["before"], c["after"], c["outcome"]) for c in changes[1:]] == [
        ("night-shift", "Pause", "running", "paused", "OK"),
        ("night-shift", "Resume", "paused", "running", "OK"),
        ("night-shift", "AddRoute", "", "", "PERMISSION_DENIED"),
        ("night-shift", "AddControlToken", "", "", "PERMISSION_DENIED"),
    ]
    assert changes[3]["object_id"] == "research" and changes[3]["outcome_indicator"] == 4
    assert changes[1]["object_id"] == "routing" and changes[1]["event_type"]["code"] == "110121"
    issued = changes[0]
    assert (issued["who"], issued["role"], issued["object_kind"], issued["object_id"]) == (
        "bootstrap",
        "administrator",
        "control-token",
        "night-shift",
    )
    assert issued["before"] == "" and issued["after"].startswith("sha256:")
    assert operator not in str(changes), "a record names the holder, never the token"


def test_an_administrators_changes_are_recorded_with_versions_before_and_after(served: Served) -> None:
    admin = _issue(served.address, "ann", "administrator")
    with control_channel(served.address, admin) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        assert routes.AddRoute(_route("first"), timeout=10).route.version == 1
        assert routes.AddRoute(_route("second"), timeout=10).route.version == 2
        assert routes.RemoveRoute(admin_pb2.RemoveRouteRequest(route_id="research"), timeout=10).removed
        gone = admin_pb2.RemoveRouteRequest(route_id="research")
        assert _code(lambda: routes.RemoveRoute(gone, timeout=10)) == grpc.StatusCode.NOT_FOUND
        unnamed = admin_pb2.RemoveRouteRequest(route_id="")
        assert _code(lambda: routes.RemoveRoute(unnamed, timeout=10)) == grpc.StatusCode.NOT_FOUND
        tokens = admin_pb2_grpc.ControlTokenAdminStub(channel)
        assert [t.name for t in tokens.ListControlTokens(admin_pb2.ListControlTokensRequest(), timeout=10).tokens] == [
            "ann"
        ]
        assert tokens.RemoveControlToken(admin_pb2.RemoveControlTokenRequest(name="ann"), timeout=10).removed
        # The token is gone: the very next call is refused (this server forgot its cached answer).
        assert _code(lambda: routes.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )

    changes = [c for c in reversed(served.changes.recent()) if c["object_kind"] == "route"]
    assert [(c["who"], c["method"].rsplit("/", 1)[1], c["before"], c["after"], c["outcome"]) for c in changes] == [
        ("ann", "AddRoute", "", "1", "OK"),
        ("ann", "AddRoute", "1", "2", "OK"),
        ("ann", "RemoveRoute", "2", "", "OK"),
        ("ann", "RemoveRoute", "", "", "NOT_FOUND"),
        ("ann", "RemoveRoute", "", "", "NOT_FOUND"),
    ]
    assert all(c["service"] == "routing" and c["event_id"]["code"] == "110113" for c in changes)
    # A removal naming nothing names nothing: it was recorded as a removal of the route "routing".
    assert [c["object_id"] for c in changes[-2:]] == ["research", ""]
    removal = served.changes.recent(limit=1)[0]
    assert (removal["who"], removal["object_id"], removal["after"]) == ("ann", "ann", "")


def test_the_audit_api_lists_the_changes_to_keys_that_see_everything(served: Served, db: Database) -> None:
    admin = _issue(served.address, "ann", "administrator")
    with control_channel(served.address, admin) as channel:
        admin_pb2_grpc.RoutingAdminStub(channel).AddRoute(_route(), timeout=10)
    keys = {"all-key": Analyst("auditor"), "org-key": Analyst("narrow", scope=Scope.parse("org:trust-a"))}
    app = create_app(MongoAuditStore(db["audit"]), keys.get, control_changes=MongoChangeLog(db))
    with TestClient(app) as http:
        page = http.get("/audit/control-changes?limit=1", headers={"Authorization": "Bearer all-key"})
        assert page.status_code == 200, page.text
        (newest,) = page.json()["changes"]
        assert (newest["who"], newest["object_id"], newest["before"], newest["after"]) == ("ann", "research", "", "1")
        assert newest["event_id"] == {"code": "110113", "meaning": "Security Alert"}
        older = http.get(
            f"/audit/control-changes?before={page.json()['next_before']}", headers={"Authorization": "Bearer all-key"}
        ).json()
        assert [c["object_id"] for c in older["changes"]] == ["ann"] and older["next_before"] is None
        made_up = http.get("/audit/control-changes?before=yesterday", headers={"Authorization": "Bearer all-key"})
        assert made_up.status_code == 422, "a `before` this API never returned was answered with the first page"
        assert http.get("/audit/control-changes", headers={"Authorization": "Bearer org-key"}).status_code == 403
        assert http.get("/audit/control-changes").status_code == 401

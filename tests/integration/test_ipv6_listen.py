"""The servers listen on IPv6 addresses as the chart's `bindAddress: "::"` asks (IPv6-only clusters).

Before, gRPC was given ":::15051" (a malformed name: the control server, and so every service, did not
start) and the HTTP servers made an IPv4 socket for "::" ("Address family for hostname not supported")."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI

from services.common import health_probe
from services.common.control_auth import static_auth
from services.common.control_server import ControlServer
from services.common.http_server import HttpServer
from services.common.runtime import StageControl
from services.common.stats import StageStats

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")


@pytest.mark.parametrize("host", ["::", "::1", "[::1]"])
def test_http_server_answers_on_ipv6(host: str) -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, int]:
        return {"ok": 1}

    server = HttpServer(app, host, 0, name="ipv6-test")
    server.start()
    try:
        assert httpx.get(f"http://[::1]:{server.port}/ping", timeout=10).json() == {"ok": 1}
        if host == "::" and socket.has_dualstack_ipv6():  # the pod's IPv4 address too, on dual-stack
            assert httpx.get(f"http://127.0.0.1:{server.port}/ping", timeout=10).json() == {"ok": 1}
    finally:
        server.stop()


@pytest.mark.parametrize("host", ["::", "[::1]"])
def test_control_server_serves_health_on_ipv6(host: str) -> None:
    server = ControlServer("test", StageControl(StageStats("test")), host=host, auth=static_auth({}))
    server.start()
    server.mark_serving()
    try:
        assert health_probe.check(f"[::1]:{server.port}", timeout_s=10) == "SERVING"
    finally:
        server.stop(0)

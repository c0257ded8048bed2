"""The container health probe against a real gRPC server on a free loopback port (no Kafka, no MongoDB)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common import health_probe
from services.common.control_auth import static_auth
from services.common.control_server import HTTP_READY, ControlServer
from services.common.stats import StatusSnapshot

ROOT = Path(__file__).resolve().parents[2]


class Idle:
    """The smallest Controllable: nothing to report, pausing changes nothing."""

    def snapshot(self) -> StatusSnapshot:
        return StatusSnapshot("probe", False, 0, 0, 0.0, {}, 0)

    def set_paused(self, paused: bool) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ControlServer]:
    served = ControlServer("probe", Idle(), port=0, auth=static_auth({}))
    served.start()
    yield served
    served.stop(0)


def _address(server: ControlServer) -> str:
    return f"127.0.0.1:{server.port}"


def test_probe_fails_while_the_service_is_not_serving_yet(server: ControlServer) -> None:
    assert health_probe.check(_address(server)) == "NOT_SERVING"
    assert health_probe.main([_address(server)]) == health_probe.NOT_HEALTHY


def test_probe_passes_once_the_service_is_serving(server: ControlServer) -> None:
    server.mark_serving()
    assert health_probe.main([_address(server)]) == health_probe.SERVING
    assert health_probe.main([_address(server), "--service", "imx.probe"]) == health_probe.SERVING


def test_probe_fails_again_when_the_service_stops_serving(server: ControlServer) -> None:
    server.mark_serving()
    server.mark_not_serving()
    assert health_probe.main([_address(server)]) == health_probe.NOT_HEALTHY


def test_an_http_api_stays_ready_while_its_stage_is_not(server: ControlServer) -> None:
    """Delivery's and audit's readiness (the chart's probe asks HTTP_READY): their HTTP APIs read MongoDB
    only, and a Kafka outage (the stage NOT_SERVING) took partners' retrievals and analysts' queries away."""
    assert health_probe.main([_address(server), "--service", HTTP_READY]) == health_probe.NOT_HEALTHY
    server.mark_http_serving()
    server.mark_serving()
    server.mark_not_serving()  # what the bus does while its broker is away
    assert health_probe.check(_address(server)) == "NOT_SERVING"
    assert health_probe.check(_address(server), service=HTTP_READY) == "SERVING"


def test_probe_fails_for_a_service_name_the_server_does_not_know(server: ControlServer) -> None:
    server.mark_serving()
    assert health_probe.check(_address(server), service="imx.nope") == "no answer (NOT_FOUND)"
    assert health_probe.main([_address(server), "--service", "imx.nope"]) == health_probe.NOT_HEALTHY


def test_probe_fails_quickly_when_nothing_listens() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert health_probe.main([f"127.0.0.1:{port}", "--timeout", "0.5"]) == health_probe.NOT_HEALTHY


def test_probe_rejects_bad_arguments() -> None:
    assert health_probe.main([]) == health_probe.USAGE
    assert health_probe.main(["127.0.0.1:1", "--timeout", "0"]) == health_probe.USAGE


def test_probe_runs_as_a_module_the_way_the_compose_health_checks_call_it(server: ControlServer) -> None:
    server.mark_serving()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "services.common.health_probe", _address(server)]
    assert subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0
    server.mark_not_serving()
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "NOT_SERVING" in failed.stderr

"""gRPC health and Control over a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.control_channel import control_channel
from services.common.control_server import ControlServer
from services.common.runtime import StageControl
from services.common.stats import StageStats
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc
from tests.control_tokens import admin_auth


@pytest.fixture
def served() -> Iterator[tuple[ControlServer, StageStats, grpc.Channel]]:
    stats = StageStats("routing")
    server = ControlServer("routing", StageControl(stats), port=0, auth=admin_auth())
    server.start()
    channel = control_channel(f"127.0.0.1:{server.port}")
    yield server, stats, channel
    channel.close()
    server.stop(0)


def test_health_reports_not_serving_until_ready_then_serving(served) -> None:  # type: ignore[no-untyped-def]
    server, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.mark_serving()
    for name in ("", "imx.routing"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_control_status_pause_and_resume(served) -> None:  # type: ignore[no-untyped-def]
    _, stats, channel = served
    control = control_pb2_grpc.ControlStub(channel)
    stats.record(processed=7, failed=2)
    stats.set_lag({("imx.routed.v1", 0): 3})
    status = control.Status(control_pb2.StatusRequest(), timeout=5)
    assert (status.service, status.processed, status.failed, status.paused) == ("routing", 7, 2, False)
    assert status.throughput_per_s > 0
    assert [(lag.topic, lag.partition, lag.lag) for lag in status.lag] == [("imx.routed.v1", 0, 3)]
    assert control.Pause(control_pb2.PauseRequest(), timeout=5).paused
    assert stats.paused and control.Status(control_pb2.StatusRequest()).paused
    assert not control.Resume(control_pb2.ResumeRequest(), timeout=5).paused
    assert not stats.paused

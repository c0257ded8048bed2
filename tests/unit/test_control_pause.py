"""Pause and resume answer the state the service is in afterwards: `imx pause gateways` answered "paused"
while the central gateways went on storing into partners' PACS."""

from __future__ import annotations

import grpc
import pytest

from services.common.control_auth import static_auth
from services.common.control_changes import MemoryChangeLog
from services.common.control_channel import control_channel
from services.common.control_roles import Role
from services.common.control_server import Controllable, ControlServer
from services.common.runtime import StageControl
from services.common.stats import StageStats, StatusSnapshot
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc

TOKEN = "imx_ctl_pause_test"


class _Unpausable:
    def snapshot(self) -> StatusSnapshot:
        return StatusSnapshot("gateways", False, 0, 0, 0.0, {}, 0)

    def set_paused(self, paused: bool) -> None:
        pass


def _pause(target: Controllable, changes: MemoryChangeLog | None = None) -> control_pb2.PauseReply:
    server = ControlServer("routing", target, auth=static_auth({TOKEN: Role.operator}, changes))
    server.start()
    try:
        with control_channel(f"127.0.0.1:{server.port}", TOKEN) as channel:
            reply: control_pb2.PauseReply = control_pb2_grpc.ControlStub(channel).Pause(
                control_pb2.PauseRequest(), timeout=30
            )
            return reply
    finally:
        server.stop(0)


def test_a_service_that_paused_says_so() -> None:
    stats = StageStats("routing")
    assert _pause(StageControl(stats)).paused and stats.snapshot().paused


def test_a_service_that_did_not_pause_is_not_reported_paused() -> None:
    changes = MemoryChangeLog()
    with pytest.raises(grpc.RpcError) as refused:
        _pause(_Unpausable(), changes)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [change] = changes.changes  # recorded as refused, not as a pause that worked
    assert (change.outcome, change.before, change.after) == ("FAILED_PRECONDITION", "running", "running")

"""A control server reads a request whole before its token is checked: at 64 MiB on every service, a few
dozen unauthenticated calls at once took a service past its memory limit. Only deid's Preview, which
carries an instance, takes large requests."""

from __future__ import annotations

import grpc
import pytest

from services.common.control_auth import static_auth
from services.common.control_channel import control_channel
from services.common.control_roles import Role
from services.common.control_server import CONTROL_MAX_REQUEST_BYTES, GRPC_MAX_MESSAGE_BYTES, ControlServer
from services.common.runtime import StageControl
from services.common.stats import StageStats

TOKEN = "imx_ctl_request_size_test"


def _status_code_for(server_limit: int, request_bytes: int) -> grpc.StatusCode:
    server = ControlServer(
        "routing",
        StageControl(StageStats("routing")),
        auth=static_auth({TOKEN: Role.administrator}),
        max_request_bytes=server_limit,
    )
    server.start()
    try:
        with control_channel(f"127.0.0.1:{server.port}", "imx_ctl_not_issued") as channel:
            raw = channel.unary_unary("/imx.v1.Control/Status")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\x0a" + b"\x00" * request_bytes, timeout=30)
    finally:
        server.stop(0)
    code: grpc.StatusCode = refused.value.code()
    return code


def test_a_request_over_the_control_planes_limit_is_refused_before_it_is_read_whole() -> None:
    assert _status_code_for(CONTROL_MAX_REQUEST_BYTES, 5 * 1024 * 1024) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_server_that_takes_instances_reads_a_large_request_and_then_checks_the_token() -> None:
    assert _status_code_for(GRPC_MAX_MESSAGE_BYTES, 5 * 1024 * 1024) == grpc.StatusCode.UNAUTHENTICATED

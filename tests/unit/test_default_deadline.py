"""The CLI's calls carry a deadline unless they name their own: a service that takes the connection and
then stalls ended the command with DEADLINE_EXCEEDED, not never."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from services.common.control_channel import DefaultDeadline
from tests.grpc_stub import serving

METHOD = "/test.Stalling/Call"


@pytest.fixture
def stalling_address() -> Iterator[str]:
    def stall(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(1.0)
        return request

    with serving("test.Stalling", {"Call": stall}) as address:
        yield address


def _call(address: str, timeout: float | None) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as plain:
        channel = grpc.intercept_channel(plain, DefaultDeadline(0.2))
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            call(b"x", timeout=timeout)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_a_call_without_a_deadline_gets_the_default(stalling_address: str) -> None:
    started = time.monotonic()
    assert _call(stalling_address, None) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9  # the default's 0.2 s, not the handler's 1 s


def test_a_call_that_names_its_own_deadline_keeps_it(stalling_address: str) -> None:
    assert _call(stalling_address, 10.0) == grpc.StatusCode.OK

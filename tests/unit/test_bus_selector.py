"""The selector the bus gives kafka-python: the standard one's behaviour, without formatting misses."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from services.common.bus import QuietSelector


@pytest.fixture
def connected() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            yield client
        finally:
            client.close()
            accepted.close()


def test_a_registered_socket_is_found_and_a_missing_one_raises_key_error(connected: socket.socket) -> None:
    selector = QuietSelector()
    with pytest.raises(KeyError):
        selector.get_key(connected)
    selector.register(connected, selectors.EVENT_READ, "task")
    key = selector.get_key(connected)
    assert key.fileobj is connected and key.data == "task"
    assert selector.get_key(connected.fileno()).data == "task"
    selector.unregister(connected)
    with pytest.raises(KeyError):
        selector.get_key(connected)
    selector.close()


def test_a_miss_does_not_format_the_socket(connected: socket.socket) -> None:
    class Counted(socket.socket):
        reprs = 0

        def __repr__(self) -> str:
            Counted.reprs += 1
            return super().__repr__()

    counted = Counted(fileno=connected.detach())
    try:
        with pytest.raises(KeyError) as raised:
            QuietSelector().get_key(counted)
        assert raised.value.args == (counted,)
        assert Counted.reprs == 0
    finally:
        counted.close()


def test_a_closed_selector_raises_like_the_standard_one() -> None:
    selector = QuietSelector()
    selector.close()
    with pytest.raises(RuntimeError):
        selector.get_key(0)

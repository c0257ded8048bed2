"""The pieces both waiting associations share (services/common/dicom/association_waits.py): the DUL's
wake-up pair, the association reactor's wait, and the large-piece socket reader ingest uses. The
gateway's requestors and ingest's acceptors are tested on real associations in
tests/integration/gateway/test_association_waits.py and tests/unit/ingest/test_association_waits.py."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from services.common.dicom import association_waits
from services.common.dicom.association_waits import RECV_PIECE, _WakeUp, read_in_large_pieces, wait_for_work


def test_the_wake_up_pair_wakes_a_wait_and_is_never_written_after_closing() -> None:
    wake = _WakeUp()
    wake.set()  # before the DUL opened it: nothing to write to, nothing raised
    wake.open()
    peer, other = socket.socketpair()
    try:
        threading.Timer(0.1, wake.set).start()
        started = time.monotonic()
        wake.wait(peer, 3.0)
        assert time.monotonic() - started < 1.0, "set() ended the wait"
        started = time.monotonic()
        wake.wait(peer, 0.05)
        assert time.monotonic() - started >= 0.04, "the signal was consumed by the wait it ended"
        wake.close()
        reused_a, reused_b = socket.socketpair()  # may take the closed pair's descriptor numbers
        try:
            wake.set()
            wake.wait(peer, 3.0)  # closed: returns at once
            reused_a.setblocking(False)
            reused_b.setblocking(False)
            with pytest.raises(BlockingIOError):
                reused_a.recv(1)
            with pytest.raises(BlockingIOError):
                reused_b.recv(1)
        finally:
            reused_a.close()
            reused_b.close()
    finally:
        wake.close()
        peer.close()
        other.close()


def test_the_reactor_takes_every_queued_message_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two messages queued under one signal: the second is taken at once, not after the wait.
    monkeypatch.setattr(association_waits, "IDLE_WAIT_S", 3.0)
    assoc: Any = Association(AE(), "acceptor")
    wait_for_work(assoc)
    assoc.dimse.msg_queue.put((1, "first"))
    assoc.dimse.msg_queue.put((1, "second"))
    started = time.monotonic()
    assert assoc.dimse.get_msg() == (1, "first")
    assert assoc.dimse.get_msg() == (1, "second")
    assert time.monotonic() - started < 1.0


def test_the_reactor_is_woken_by_a_message_a_peers_primitive_and_a_pause_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(association_waits, "IDLE_WAIT_S", 3.0)
    assoc: Any = Association(AE(), "acceptor")
    wait_for_work(assoc)
    signals = [
        lambda: assoc.dimse.msg_queue.put((1, "message")),
        lambda: assoc.dul.to_user_queue.put("A-RELEASE"),
        assoc._reactor_checkpoint.clear,
    ]
    for signal in signals:
        threading.Timer(0.1, signal).start()
        started = time.monotonic()
        assoc.dimse.get_msg()
        assert 0.05 < time.monotonic() - started < 1.0, "waited for the signal, and no longer"


class _Sock:
    """The one attribute of AssociationSocket that `recv` uses."""

    def __init__(self, raw: Any) -> None:
        self.socket = raw


def test_reading_returns_exactly_what_was_asked_for_in_few_calls() -> None:
    ours, peer = socket.socketpair()
    calls = 0
    recv = ours.recv

    class Counting:
        def recv(self, n: int) -> bytes:
            nonlocal calls
            calls += 1
            return recv(n)

    sock: Any = _Sock(Counting())
    read_in_large_pieces(sock)
    payload = bytes(range(256)) * 4096  # 1 MiB
    sender = threading.Thread(target=peer.sendall, args=(payload + b"next",))
    sender.start()
    try:
        assert sock.recv(len(payload)) == payload
        assert sock.recv(4) == b"next"
        assert calls < len(payload) // 4096  # pynetdicom's 4 KiB pieces: 256 calls
    finally:
        sender.join()
        ours.close()
        peer.close()


def test_reading_returns_what_came_before_the_peer_closed() -> None:
    ours, peer = socket.socketpair()
    sock: Any = _Sock(ours)
    read_in_large_pieces(sock)
    peer.sendall(b"partial")
    peer.close()
    try:
        assert sock.recv(RECV_PIECE * 3) == bytearray(b"partial")
    finally:
        ours.close()

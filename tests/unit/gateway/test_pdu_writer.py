"""The PDUs the gateway writes to the socket itself are byte for byte the ones pynetdicom's DUL would
have written for the same request, and they all arrive, whatever the socket takes per call."""

from __future__ import annotations

import socket
import threading
import time
from io import BytesIO

import pytest
from pynetdicom.pdu import P_DATA_TF

from services.gateway import pdu_writer
from services.gateway.dimse_exchange import message_pdus
from services.gateway.dimse_store import c_store_command
from services.gateway.pdu_writer import SendStalled, send_all, send_direct

CT = "1.2.840.10008.5.1.4.1.1.2"


def data_set(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"z" * (size % 256)


def pynetdicom_bytes(command: bytes, data: bytes, context_id: int, pdu_size: int) -> bytes:
    """What the DUL sends: each P_DATA of `message_pdus` as pynetdicom encodes its P-DATA-TF PDU."""
    pdus = []
    for pdata in message_pdus(command, BytesIO(data), context_id, pdu_size):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        pdus.append(pdu.encode())
    return b"".join(pdus)


def received_from(send: object, chunk: int = 65536) -> tuple[bytes, BaseException | None]:
    """Run `send(sock)` against one end of a socket pair with small buffers; what the other end read."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            send(ours)  # type: ignore[operator]
        except BaseException as error:  # reported to the test
            failure.append(error)
        finally:
            ours.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=run)
    sender.start()
    pieces = []
    while piece := theirs.recv(chunk):
        pieces.append(piece)
    sender.join()
    ours.close()
    theirs.close()
    return b"".join(pieces), failure[0] if failure else None


SIZES_AND_PDUS = [
    (size, pdu_size)
    for size in (0, 1, 100, 16378, 16379, 40_000, 3 * 1024 * 1024 + 5)
    for pdu_size in (16, 16384, 131072)
    if not (pdu_size == 16 and size > 40_000)  # millions of 10-byte fragments say nothing more
]


@pytest.mark.parametrize("in_memory", [False, True], ids=["read", "in-memory"])
@pytest.mark.parametrize(("size", "pdu_size"), SIZES_AND_PDUS)
def test_the_bytes_written_are_pynetdicoms_pdus(
    monkeypatch: pytest.MonkeyPatch, size: int, pdu_size: int, in_memory: bool
) -> None:
    monkeypatch.setattr(pdu_writer, "DIRECT_BLOCK", 64 * 1024)  # several blocks, a partial last one
    command, data = c_store_command(9, CT, "1.2.3.4"), data_set(size)
    expected = pynetdicom_bytes(command, data, 3, pdu_size)
    source = memoryview(data) if in_memory else BytesIO(data)  # fetched.py: held in memory, or a file
    got, failure = received_from(lambda sock: send_direct(sock, command, source, size, 3, pdu_size, 10))
    assert failure is None
    assert got == expected


def test_a_data_set_shorter_than_its_length_ends_the_send() -> None:
    command = c_store_command(1, CT, "1.2.3")
    _, failure = received_from(lambda sock: send_direct(sock, command, BytesIO(b"x" * 10), 11, 1, 16384, 10))
    assert isinstance(failure, ConnectionError)


def test_a_peer_that_stops_reading_stalls_the_send_not_the_gateway() -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with pytest.raises(SendStalled):
            send_all(ours, [memoryview(b"x" * (4 * 1024 * 1024))], 0.2)
    finally:
        ours.close()
        theirs.close()


def test_a_peer_that_goes_away_during_the_send_ends_it_as_a_lost_connection() -> None:
    """An OSError, which DimseStore takes as the association lost (then tells why by associating)."""
    ours, theirs = socket.socketpair()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        closer = threading.Timer(0.2, theirs.close)
        closer.start()
        started = time.monotonic()
        with pytest.raises(OSError):
            send_all(ours, [memoryview(b"x" * (4 * 1024 * 1024))], 10)
        assert time.monotonic() - started < 5, "not left to wait for the stall timeout"
        closer.join()
    finally:
        ours.close()
        theirs.close()

"""A plain C-STORE-RSP is read as pynetdicom reads it, off the socket by the sender when it has the socket;
anything else is left to pynetdicom."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from queue import Queue
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from services.gateway.dimse_responses import (
    NoResponse,
    c_store_response,
    read_store_responses_directly,
    take_store_response,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def encoded(message: DIMSEMessage, primitive: Any) -> bytes:
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 0))
    return bytes(pdata.presentation_data_value_list[0][1])


def store_response(status: int, message_id: int = 7, sop_instance: str = "1.2.3.45", **extra: Any) -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = CT
    response.AffectedSOPInstanceUID = sop_instance
    response.Status = status
    for name, value in extra.items():
        setattr(response, name, value)
    return response


def pynetdicoms_reading(pdv: bytes) -> C_STORE:
    message = DIMSEMessage()
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((1, pdv))
    assert message.decode_msg(pdata)
    return message.message_to_primitive()  # type: ignore[return-value]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC000])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45"])
def test_a_plain_response_reads_as_pynetdicom_reads_it(status: int, sop_instance: str) -> None:
    pdv = encoded(C_STORE_RSP(), store_response(status, sop_instance=sop_instance))
    ours, theirs = c_store_response(pdv[1:]), pynetdicoms_reading(pdv)
    assert ours is not None and ours.is_valid_response
    for name in ("MessageIDBeingRespondedTo", "Status", "AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert type(getattr(ours, name)) is type(getattr(theirs, name)), name


@pytest.mark.parametrize("sop_instance", ["1.02.3", "1.2.3.", "01.2"])
def test_a_response_with_a_uid_pynetdicom_would_warn_of_is_left_to_pynetdicom(sop_instance: str) -> None:
    """The UIDs are checked for conformance (PS3.5 9.1) without pydicom's validators; what is not
    conformant takes pynetdicom's way, which reads and warns of it."""
    pdv = encoded(C_STORE_RSP(), store_response(0, sop_instance=sop_instance))
    assert pynetdicoms_reading(pdv).AffectedSOPInstanceUID == sop_instance
    assert c_store_response(pdv[1:]) is None


def test_anything_but_a_plain_store_response_is_left_to_pynetdicom() -> None:
    commented = encoded(C_STORE_RSP(), store_response(0xC000, ErrorComment="cannot"))
    assert c_store_response(commented[1:]) is None, "an Error Comment: pynetdicom reads it"
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    assert c_store_response(encoded(C_ECHO_RSP(), echo)[1:]) is None
    plain = encoded(C_STORE_RSP(), store_response(0))[1:]
    for cut in (3, 8, len(plain) - 1):
        assert c_store_response(plain[:cut]) is None, "truncated"


class FakeDimse:
    def __init__(self) -> None:
        self.message = None
        self.msg_queue: Queue[Any] = Queue()
        self.passed: list[Any] = []

    def receive_primitive(self, primitive: Any) -> None:
        self.passed.append(primitive)


class FakeAssociation:
    def __init__(self) -> None:
        self.dimse = FakeDimse()


def pdata(pdv: bytes, context_id: int = 3) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, pdv))
    return primitive


def test_the_association_queues_plain_responses_and_passes_on_everything_else() -> None:
    assoc = FakeAssociation()
    read_store_responses_directly(assoc)  # type: ignore[arg-type]
    assoc.dimse.receive_primitive(pdata(encoded(C_STORE_RSP(), store_response(0))))
    context_id, response = assoc.dimse.msg_queue.get_nowait()
    assert (context_id, response._context_id, response.Status) == (3, 3, 0)
    other = pdata(b"\x01" + b"first fragment of a longer command")
    assoc.dimse.receive_primitive(other)
    assert assoc.dimse.passed == [other] and assoc.dimse.msg_queue.empty()


# The sender's own read (take_store_response): a real TCP connection on this host.


def _pdu(pdv: bytes, context_id: int) -> bytes:
    """The P-DATA-TF PDU of one PDV (PS3.8 9.3.5): PDU header, PDV item header, the PDV."""
    return struct.pack(">BBLLB", 0x04, 0, 4 + 1 + len(pdv), 1 + len(pdv), context_id) + pdv


ABORT_PDU = bytes.fromhex("0700 0000 0004 0000 0200".replace(" ", ""))  # A-ABORT-RQ, PS3.8 9.3.8


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on the loopback, blocking at our end as pynetdicom leaves a requestor's (a
    socketpair is AF_UNIX, where a peek does not wait for all it asks)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peers, _ = server.accept()
    try:
        yield ours, peers
    finally:
        ours.close()
        peers.close()


def unread(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def test_the_sender_takes_a_plain_response_off_the_socket_and_nothing_after_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peers = pair
    peers.sendall(_pdu(encoded(C_STORE_RSP(), store_response(0xB000)), 5) + ABORT_PDU)
    response = take_store_response(ours, 1.0)
    assert response is not None
    assert (response.Status, response.MessageIDBeingRespondedTo, response._context_id) == (0xB000, 7, 5)
    assert unread(ours) == ABORT_PDU, "what followed is the DUL's"


def test_a_response_written_in_pieces_is_waited_for_as_dcmtk_writes_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peers = pair
    whole = _pdu(encoded(C_STORE_RSP(), store_response(0)), 1)
    peers.sendall(whole[:12])  # the PDU's and the PDV item's headers, then the command set
    later = threading.Timer(0.05, peers.sendall, (whole[12:],))
    later.start()
    response = take_store_response(ours, 2.0)
    later.join()
    assert response is not None and response.Status == 0
    assert unread(ours) == b""


def test_anything_else_is_left_on_the_socket_for_the_dul(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peers = pair
    commented = _pdu(encoded(C_STORE_RSP(), store_response(0xC000, ErrorComment="cannot")), 1)
    for first in (commented, ABORT_PDU, _pdu(b"\x01" + b"first fragment", 1)):
        peers.sendall(first)
        assert take_store_response(ours, 1.0) is None
        assert unread(ours) == first, "peeked at, not taken"


def test_a_closed_connection_is_the_duls_and_silence_is_no_response(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peers = pair
    started = time.monotonic()
    with pytest.raises(NoResponse):
        take_store_response(ours, 0.2)
    assert 0.15 < time.monotonic() - started < 1.0
    whole = _pdu(encoded(C_STORE_RSP(), store_response(0)), 1)
    peers.sendall(whole[:12])
    with pytest.raises(NoResponse):  # half a PDU and then nothing: the DIMSE timeout still holds
        take_store_response(ours, 0.2)
    peers.close()
    assert take_store_response(ours, 1.0) is None

"""One C-STORE request and its response on a pynetdicom association: how they travel.

The gateway's associations are WaitingAE's (services/common/dicom/association_waits.py), whose socket a
sending thread can take from the DUL thread for a turn (`SocketTurn`). `exchange_in_turn` takes it,
writes the request's PDUs itself (services/gateway/pdu_writer.py) and reads a plain C-STORE-RSP off
the socket itself (`take_store_response`, services/gateway/dimse_responses.py): no PDU goes through the
DUL and no response through the DIMSE queue, so neither of pynetdicom's threads wakes for a store and
the association's reactor is not paused for it (issue 10: ~0.2 ms of CPU and two hand-overs between
threads per instance, measured in the gateway README). Whatever else the peer sends (an abort, a closed
connection, a response with more than the plain elements) is left on the socket for the DUL, which
reads it as before, and the answer comes the way pynetdicom gives it (`answer_from_dul`), the reactor
paused meanwhile. A socket that is not plain TCP (TLS) is written through the DUL (`send_request`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

from services.common.dicom.association_waits import SocketTurn, socket_turn
from services.gateway.dimse_responses import take_store_response
from services.gateway.pdu_writer import SendStalled

# pynetdicom's `DIMSEServiceProvider.send_msg` puts every P-DATA PDU of a message on the DUL's queue at
# once (unbounded; the DUL thread sends them one by one), so a data set streamed from a file is read into
# memory as fast as the disk gives it, not as fast as the PACS takes it. Handed over at most this many
# ahead of the socket instead, a send holds QUEUED_PDUS x the PDU size, whatever the instance's size.
QUEUED_PDUS = 8
# A peer that states no maximum PDU length (0) would get the whole data set as one PDU (read whole
# into memory); PS3.8 9.3.1 lets a sender use any length up to the peer's maximum.
LARGEST_PDU = 1024 * 1024


def message_pdus(command: bytes, data_set: BinaryIO, context_id: int, pdu_size: int) -> Iterator[P_DATA]:
    """The P-DATA primitives of one DIMSE message (PS3.8 E.2; PS3.7 6.3.1): the command set, then the
    data set read from `data_set` to its end, each in fragments of at most `pdu_size` - 6 bytes, one
    fragment per P-DATA as pynetdicom's `DIMSEMessage.encode_msg` sends them. The message control
    header says command or data set, and whether the fragment is the last one."""
    piece = pdu_size - 6
    for start in range(0, len(command), piece):
        last = start + piece >= len(command)
        yield _pdata(context_id, (b"\x03" if last else b"\x01") + command[start : start + piece])
    fragment = data_set.read(piece)
    while True:
        following = data_set.read(piece)
        yield _pdata(context_id, (b"\x00" if following else b"\x02") + fragment)
        if not following:
            return
        fragment = following


def _pdata(context_id: int, pdv: bytes) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, pdv))
    return pdata


def send_request(assoc: Association, command: bytes, data_set: BinaryIO, context_id: int, stall_s: float) -> None:
    """`DIMSEServiceProvider.send_msg` of pynetdicom 3.0 for a C-STORE request, with the P-DATA PDUs
    handed to the DUL at most QUEUED_PDUS ahead of its socket. Raises ConnectionError when the
    association ends meanwhile, SendStalled when no PDU left the queue for `stall_s`."""
    size = pdu_size(assoc)
    queue = assoc.dul.to_provider_queue
    for pdata in message_pdus(command, data_set, context_id, size):
        waiting, moved_at = queue.qsize(), time.monotonic()
        while waiting >= QUEUED_PDUS:
            if not assoc.is_established:
                raise ConnectionError("the association ended during the send")
            if time.monotonic() - moved_at > stall_s:
                raise SendStalled
            time.sleep(0.0005)
            now_waiting = queue.qsize()
            if now_waiting < waiting:
                moved_at = time.monotonic()
            waiting = now_waiting
        assoc.dul.send_pdu(pdata)


def exchange_in_turn(
    assoc: Association, turn: SocketTurn, sock: socket.socket, send: Callable[[], None], timeout_s: float
) -> Any:
    """`send` (which writes the request to `sock`), then its response, read on this thread when it is
    plain, else from pynetdicom (`answer_from_dul`); the socket taken from the DUL for both (module
    doc). NoResponse when nothing came within `timeout_s`; what `send` raises, after the turn is given
    back."""
    turn.take()
    try:
        send()
        response = take_store_response(sock, timeout_s)
    except BaseException:
        turn.give_back(unread=True)  # the DUL sees what ended the exchange, if it was the peer
        raise
    if response is not None:
        turn.give_back(received=True)
        return response
    return answer_from_dul(assoc, lambda: turn.give_back(unread=True))


def answer_from_dul(assoc: Association, send: Callable[[], None]) -> Any:
    """`send`, then the response pynetdicom's DUL puts on the DIMSE queue (None when the association
    ends or nothing comes within the DIMSE timeout), the association's reactor paused meanwhile: it
    would take the response, or the None of an abort, off the queue."""
    reactor: Any = assoc
    reactor._reactor_checkpoint.clear()
    while not reactor._is_paused and assoc.is_established:
        time.sleep(0.0001)
    try:
        send()
        return assoc.dimse.get_msg(block=True)[1]
    finally:
        reactor._reactor_checkpoint.set()


SETTLE_S = 1.0


def settled(assoc: Association) -> bool:
    """The association is up and nothing its peer sent unasked waits on the socket. Between requests a
    peer sends nothing but an abort or a release request, or closes the connection; the DUL, perhaps
    still waiting out the previous request's turn (services/common/dicom/association_waits.py), is
    woken to read it, and given up to SETTLE_S: the next request then goes on a new association
    instead of being lost with the one that ends."""
    sock, turn = plain_socket(assoc), socket_turn(assoc)
    if sock is None or turn is None:
        return bool(assoc.is_established)
    deadline = time.monotonic() + SETTLE_S
    while assoc.is_established:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        turn.wake_dul()
        time.sleep(0.001)
    return False


def pdu_size(assoc: Association) -> int:
    peer_max = int(assoc.dimse.maximum_pdu_size or 0)
    return peer_max if 0 < peer_max <= LARGEST_PDU else LARGEST_PDU


def plain_socket(assoc: Association) -> socket.socket | None:
    """The association's TCP socket when the PDUs can be written to it directly (not TLS: an SSL socket
    has no `sendmsg`); None: hand them to the DUL (`send_request`)."""
    raw = getattr(assoc.dul.socket, "socket", None)
    return raw if type(raw) is socket.socket else None

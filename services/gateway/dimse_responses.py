"""C-STORE responses read without pydicom: the gateway's only incoming DIMSE message, per instance.

pynetdicom hands every complete message to `DIMSEServiceProvider.receive_primitive`, which decodes the
command set with pydicom, converts it into a primitive element by element and fires its logging event:
about a sixth of the gateway's CPU per instance in `make bench` (py-spy, `--gil`), for a response of
six or seven small elements. `read_store_responses_directly` puts a plain C-STORE-RSP (PS3.7 9.3.1.2,
Table 9.1-1: the command set in one fragment, no data set, no elements beyond the usual ones) on the
association's DIMSE queue as pynetdicom would, parsed here (Implicit VR Little Endian, PS3.7 6.3.1).
Anything else, including a response with an Error Comment or Offending Element, takes pynetdicom's way.

`take_store_response` goes further, for a sender that has the association's socket (its SocketTurn,
services/common/dicom/association_waits.py): it reads the plain response off the socket itself, so the
DUL thread does not wake, read, run its state machine and hand the answer over through the DIMSE
queue. It only peeks at anything else, which stays on the socket for the DUL to read as before.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any

from pydicom.config import IGNORE
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from services.common.dicom.association_waits import receive_timeout, set_receive_timeout
from services.common.dicom.uids import is_conformant_uid

C_STORE_RSP_FIELD = 0x8001  # PS3.7 Table E.1-1 Command Field
NO_DATA_SET = 0x0101  # PS3.7 Table E.1-1 Command Data Set Type
LAST_COMMAND_FRAGMENT = 0x03  # PS3.8 E.2 message control header: command, last fragment
# The elements of a plain C-STORE-RSP, group 0000 (PS3.7 Table 9.1-1).
_GROUP_LENGTH, _SOP_CLASS, _FIELD, _RESPONDED_TO, _DATA_SET_TYPE, _STATUS, _SOP_INSTANCE = (
    0x0000,
    0x0002,
    0x0100,
    0x0120,
    0x0800,
    0x0900,
    0x1000,
)
_PLAIN = frozenset({_GROUP_LENGTH, _SOP_CLASS, _FIELD, _RESPONDED_TO, _DATA_SET_TYPE, _STATUS, _SOP_INSTANCE})


def _us(value: bytes) -> int:
    return int(struct.unpack("<H", value)[0])


def _uid(value: bytes) -> UID | None:
    """The UID as pynetdicom's setter makes it, for a conformant one (an empty one is None, as there);
    ValueError for anything else, which pynetdicom then reads (and warns of). The setter validates
    with pydicom twice over, ~30 us per response: more than the rest of the parsing."""
    text = value.rstrip(b"\x00 ").decode("ascii")
    if not text:
        return None
    if not is_conformant_uid(text):
        raise ValueError("not a conformant UID")
    return UID(text, validation_mode=IGNORE)


def c_store_response(command: bytes) -> C_STORE | None:
    """The C-STORE-RSP an encoded command set holds, as pynetdicom's primitive; None when it holds
    anything else, or more than the plain elements, or is malformed (pynetdicom then reads it)."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if offset + 8 > len(command):
            return None
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group != 0x0000 or element not in _PLAIN or element in values or offset + length > len(command):
            return None
        values[element] = command[offset : offset + length]
        offset += length
    try:
        if _us(values[_FIELD]) != C_STORE_RSP_FIELD or _us(values[_DATA_SET_TYPE]) != NO_DATA_SET:
            return None
        response = C_STORE()
        response.MessageIDBeingRespondedTo = _us(values[_RESPONDED_TO])
        response.Status = _us(values[_STATUS])
        # Checked by `_uid`: set as pynetdicom's setters would have left them, without their checks.
        if _SOP_CLASS in values:
            response._affected_sop_class_uid = _uid(values[_SOP_CLASS])
        if _SOP_INSTANCE in values:
            response._affected_sop_instance_uid = _uid(values[_SOP_INSTANCE])
    except (KeyError, struct.error, UnicodeDecodeError, ValueError, TypeError):
        return None
    return response


def read_store_responses_directly(assoc: Association) -> None:
    """Have the association's DIMSE provider queue plain C-STORE responses parsed by
    `c_store_response` (same queue, same context id, as its own `receive_primitive` would); every
    other P-DATA goes to pynetdicom as before. The DUL thread calls this for each P-DATA it receives."""
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        pdvs = primitive.presentation_data_value_list
        if dimse.message is None and len(pdvs) == 1 and pdvs[0][1][:1] == bytes([LAST_COMMAND_FRAGMENT]):
            context_id, pdv = pdvs[0]
            response = c_store_response(pdv[1:])
            if response is not None:
                response._context_id = context_id
                dimse.msg_queue.put((context_id, response))
                return
        receive(primitive)

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]


P_DATA_TF = 0x04  # PS3.8 9.3.5 PDU type
# A plain C-STORE-RSP PDU is under 300 bytes (two UIDs of at most 64); anything longer is the DUL's.
PEEK_BYTES = 1024


class NoResponse(Exception):
    """Nothing came from the peer within the DIMSE timeout."""


def plain_response_pdu(peeked: bytes) -> tuple[int, C_STORE] | None:
    """The length of the PDU at the start of `peeked` and the C-STORE-RSP it holds, when it is a whole
    P-DATA-TF of one PDV, the last fragment of a command, that `c_store_response` reads (PS3.8 9.3.5,
    E.2); None for anything else, or a PDU not yet whole in `peeked`."""
    if len(peeked) < 12 or peeked[0] != P_DATA_TF:
        return None
    pdu_length, item_length, context_id, control = struct.unpack_from(">xxLLBB", peeked)
    if item_length + 4 != pdu_length or len(peeked) < 6 + pdu_length or control != LAST_COMMAND_FRAGMENT:
        return None
    response = c_store_response(peeked[12 : 6 + pdu_length])
    if response is None:
        return None
    response._context_id = context_id
    return 6 + pdu_length, response


def take_store_response(sock: socket.socket, timeout_s: float) -> C_STORE | None:
    """Wait up to `timeout_s` for the peer's next PDU and, when it is a plain C-STORE-RSP
    (`plain_response_pdu`), take it off the socket and return it. None: the next PDU is anything else
    (an abort, a release, a response pynetdicom has to read) or the connection ended; nothing is taken
    off the socket then, the DUL reads it. NoResponse when nothing (or not the whole PDU) came. The
    socket stays blocking as pynetdicom set it: the calls are MSG_DONTWAIT, or bounded (`_peek_whole`)."""
    deadline = time.monotonic() + timeout_s
    peeked = _peek_first(sock, deadline)
    if not peeked or peeked[0] != P_DATA_TF:
        return None
    try:
        if len(peeked) < 6:
            peeked = _peek_whole(sock, 6, deadline)
        length = 6 + int.from_bytes(peeked[2:6], "big")
        if length > PEEK_BYTES:
            return None
        if len(peeked) < length:
            peeked = _peek_whole(sock, length, deadline)
    except OSError:
        return None
    found = plain_response_pdu(peeked)
    if found is None:
        return None
    taken = sock.recv(length, socket.MSG_DONTWAIT)  # already here: peeked whole
    if len(taken) != length:
        raise ConnectionError("the socket gave less than it had shown")
    return found[1]


def _peek_first(sock: socket.socket, deadline: float) -> bytes | None:
    """Up to PEEK_BYTES of what the peer sent first, left on the socket, waited for until `deadline`
    (NoResponse then); b"" when the connection was closed, None when it failed (the DUL's to see)."""
    while True:
        try:
            readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        except (OSError, ValueError):  # closed meanwhile
            return None
        if not readable:
            raise NoResponse
        try:
            return sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:  # reset
            return None


def _peek_whole(sock: socket.socket, length: int, deadline: float) -> bytes:
    """The first `length` bytes on the socket, left there, waited for until `deadline`: a PDU may come
    in pieces (dcmtk writes a P-DATA-TF's headers and its command set apart, most of the time two
    segments). The socket blocks (pynetdicom's requestor sockets do): the wait is bounded by
    SO_RCVTIMEO, the association's own (WaitingAE's) restored after. NoResponse when the rest did not
    come in time; fewer bytes when the connection ended (the DUL's to see)."""
    wait_s = max(0.001, deadline - time.monotonic())
    own = receive_timeout(sock)
    set_receive_timeout(sock, wait_s)
    try:
        peeked = sock.recv(length, socket.MSG_PEEK | socket.MSG_WAITALL)
    except BlockingIOError:
        raise NoResponse from None
    finally:
        set_receive_timeout(sock, own)
    if len(peeked) < length and time.monotonic() >= deadline:
        raise NoResponse
    return peeked

"""C-STORE responses read without pydicom: the gateway's only incoming DIMSE message, per instance.

pynetdicom hands every complete message to `DIMSEServiceProvider.receive_primitive`, which decodes the
command set with pydicom, converts it into a primitive element by element and fires its logging event:
about a sixth of the gateway's CPU per instance in `make bench` (py-spy, `--gil`), for a response of
six or seven small elements. `read_store_responses_directly` puts a plain C-STORE-RSP (PS3.7 9.3.1.2,
Table 9.1-1: the command set in one fragment, no data set, no elements beyond the usual ones) on the
association's DIMSE queue as pynetdicom would, parsed here (Implicit VR Little Endian, PS3.7 6.3.1).
Anything else, including a response with an Error Comment or Offending Element, takes pynetdicom's way.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

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


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii")


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
        if _SOP_CLASS in values:
            response.AffectedSOPClassUID = _uid(values[_SOP_CLASS])
        if _SOP_INSTANCE in values:
            response.AffectedSOPInstanceUID = _uid(values[_SOP_INSTANCE])
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

"""C-STORE-RQ command sets read with `struct`: the values pynetdicom reads through pydicom, without it.

For every request pynetdicom decodes the command set with pydicom, reads its Command Field and Command
Data Set Type (and ingest its SOP class and instance UIDs) through pydicom's element conversion, and
`message_to_primitive` then walks the whole data set again to fill the C-STORE primitive: ~0.15 ms
per instance (issue 10), for seven elements. Here the command set of an ordinary C-STORE-RQ (PS3.7
Table 9.1-1: group length, Affected SOP Class UID, Command Field, Message ID, Priority, Command Data
Set Type, Affected SOP Instance UID; implicit VR little endian, PS3.7 6.3.1) is read with `struct`,
and the primitive is filled by the same setters, in the same order, with the same values.

Only a command set whose every value pydicom reads the same way is read here: each element once, of
the length its VR gives, UIDs valid by pydicom's own rule (so pydicom would not warn about them)
and not multi-valued. Anything else — a Move Originator, an element of another command, a UID
pydicom would warn about — is read by pydicom, as before. The command set is still decoded by pydicom
(its elements left unread until someone asks), so `message.command_set` is what it was.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE

from services.common.dicom.uids import is_conformant_uid

_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian: group, element, value length (PS3.5 7.1.3)
_US = struct.Struct("<H")
_C_STORE_RQ = 0x0001  # PS3.7 Table E.1-1 Command Field
_GROUP_LENGTH, _CLASS_UID, _COMMAND_FIELD, _MESSAGE_ID = 0x0000, 0x0002, 0x0100, 0x0110
_PRIORITY, _DATA_SET_TYPE, _INSTANCE_UID = 0x0700, 0x0800, 0x1000
_US_ELEMENTS = frozenset((_COMMAND_FIELD, _MESSAGE_ID, _PRIORITY, _DATA_SET_TYPE))
_UI_ELEMENTS = frozenset((_CLASS_UID, _INSTANCE_UID))
_REQUIRED = _US_ELEMENTS | _UI_ELEMENTS


@dataclass(frozen=True, slots=True)
class StoreCommand:
    """The values of a C-STORE-RQ command set, as pydicom would read them."""

    affected_sop_class_uid: UID
    message_id: int
    priority: int
    command_data_set_type: int
    affected_sop_instance_uid: UID


def _uid(value: bytes) -> UID | None:
    """What pydicom reads from a UI value (`convert_UI`: trailing NULs and spaces removed), when it is
    one valid UID of at most 64 characters; otherwise None."""
    if not value.isascii():
        return None
    text = value.decode("ascii").rstrip("\0 ")
    if not is_conformant_uid(text):
        return None
    return UID(text)


def read_store_command(encoded: bytes) -> StoreCommand | None:
    """The C-STORE-RQ whose encoded command set is `encoded`; None when it is not an ordinary one or
    pydicom might read it differently (then pydicom reads it)."""
    numbers: dict[int, int] = {}
    uids: dict[int, UID] = {}
    seen: set[int] = set()
    offset, end = 0, len(encoded)
    while offset < end:
        if end - offset < _ELEMENT.size:
            return None
        group, element, length = _ELEMENT.unpack_from(encoded, offset)
        offset += _ELEMENT.size
        if group != 0 or length > end - offset or element in seen:
            return None
        seen.add(element)
        value = encoded[offset : offset + length]
        offset += length
        if element in _US_ELEMENTS:
            if length != _US.size:
                return None
            (numbers[element],) = _US.unpack(value)
        elif element in _UI_ELEMENTS:
            uid = _uid(value)
            if uid is None:
                return None
            uids[element] = uid
        elif element != _GROUP_LENGTH or length != 4:
            return None
    if numbers.keys() | uids.keys() != _REQUIRED or numbers[_COMMAND_FIELD] != _C_STORE_RQ:
        return None
    return StoreCommand(
        uids[_CLASS_UID], numbers[_MESSAGE_ID], numbers[_PRIORITY], numbers[_DATA_SET_TYPE], uids[_INSTANCE_UID]
    )


def to_primitive(message: Any) -> Any:
    """`message.message_to_primitive()`: for a C-STORE-RQ read by `read_store_command`, the C-STORE
    primitive filled by its setters in the command set's element order (so an invalid value raises
    what it raised), its data set, context, file and path as pynetdicom sets them."""
    command: StoreCommand | None = getattr(message, "imx_store_command", None)
    if command is None:
        return message.message_to_primitive()
    primitive = C_STORE()
    primitive.AffectedSOPClassUID = command.affected_sop_class_uid
    primitive.MessageID = command.message_id
    primitive.Priority = command.priority
    primitive.AffectedSOPInstanceUID = command.affected_sop_instance_uid
    primitive.DataSet = message.data_set
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive

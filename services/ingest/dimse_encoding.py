"""What ingest's C-STORE SCP encodes itself instead of through pydicom's writer: the File Meta
Information of each received data set's file and the C-STORE response command set.

pynetdicom builds both as pydicom datasets (every UID validated as it is set) and writes them with
pydicom's writer, whose per-element character-set lookup dominates for these few short elements:
~0.25 ms per instance for the file meta and ~0.35 ms for the response (encoded twice, once to learn
its group length), the largest costs of ingest's association threads after the instance's own I/O
(py-spy --gil, issue 10). Here both are the same bytes built with `struct`; a value pydicom would write
differently, or would warn about (a UID that is not valid, PS3.5 9.1; an over-long comment; anything
not ASCII), goes through pynetdicom and pydicom as before, so the stored file and the response on the
wire never depend on which path wrote them. tests/unit/ingest/test_dimse_encoding.py compares both
byte for byte with pynetdicom's.

pynetdicom's "standard" handlers (EVT_PDU_RECV/SENT, EVT_DIMSE_RECV/SENT) only build lines for its
debug log, which ingest keeps at WARNING (services/common/logs.py), yet cost an `Event` per PDU and a
formatted request summary per instance: `without_log_handlers` unbinds them from an association.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomIO
from pydicom.filewriter import write_file_meta_info as pydicom_write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dsutils, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from services.common.dicom.command_set import command_element, command_set, ui_value, us_value

# PS3.5 9.1, as pydicom validates a UI value (pydicom/valuerep.py): what does not match is left to it.
_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID = 64  # PS3.5 Table 6.2-1, UI
MAX_LO = 64  # PS3.5 Table 6.2-1, LO
MAX_SH = 16  # PS3.5 Table 6.2-1, SH

C_STORE_RSP_FIELD = 0x8001  # PS3.7 Table E.1-1 Command Field
NO_DATA_SET = 0x0101  # PS3.7 Table E.1-1 Command Data Set Type
PDV_OVERHEAD = 6  # PS3.8 9.3.5.1: item length (4), presentation context id (1), message control header (1)
LAST_COMMAND_FRAGMENT = b"\x03"  # PS3.8 E.2: command information, last fragment
P_DATA_TF_TYPE = 0x04  # PS3.8 Table 9-22
PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length (PS3.8 9.3.1)
PDV_HEADER = struct.Struct(">LB")  # item length, presentation context id (PS3.8 9.3.5.1)

LOG_HANDLERS = (
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
)


class Unwritten(ValueError):
    """A value this module does not encode: pydicom writes it (or refuses it) instead."""


def _uid(value: object) -> bytes:
    """A UI value as pydicom writes it: NUL-padded to even length (PS3.5 6.2)."""
    if not isinstance(value, str) or len(value) > MAX_UID or not _VALID_UID.fullmatch(value):
        raise Unwritten("UID")
    return ui_value(value)


def _text(value: object, max_length: int) -> bytes:
    """An LO or SH value as pydicom writes it: one value, space-padded to even length (PS3.5 6.2)."""
    if not isinstance(value, str) or len(value) > max_length or not value.isascii() or "\\" in value:
        raise Unwritten("text")
    encoded = value.encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded


# ---- File Meta Information (PS3.10 7.1), always Explicit VR Little Endian


class FileMetaFields(NamedTuple):
    """What pynetdicom's `create_file_meta` is given, kept as it is until written."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str
    implementation_version: str


def create_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
    implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION,
) -> FileMetaFields:
    """Stands in for `pynetdicom.dsutils.create_file_meta` where pynetdicom writes a received file."""
    return FileMetaFields(sop_class_uid, sop_instance_uid, transfer_syntax, implementation_uid, implementation_version)


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One element with a 2-byte length (PS3.5 7.1.2, Table 7.1-2)."""
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(fields: FileMetaFields) -> bytes:
    """The File Meta Information group as pydicom's `write_file_meta_info` writes the dataset
    pynetdicom's `create_file_meta` builds from `fields`; raises Unwritten for what it would not."""
    body = b"".join(
        (
            # (0002,0001) OB: 4-byte length after two reserved bytes (PS3.5 Table 7.1-1)
            struct.pack("<HH", 0x0002, 0x0001) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01",
            _explicit(0x0002, 0x0002, b"UI", _uid(fields.sop_class_uid)),
            _explicit(0x0002, 0x0003, b"UI", _uid(fields.sop_instance_uid)),
            _explicit(0x0002, 0x0010, b"UI", _uid(fields.transfer_syntax)),
            _explicit(0x0002, 0x0012, b"UI", _uid(fields.implementation_uid)),
            _explicit(0x0002, 0x0013, b"SH", _text(fields.implementation_version, MAX_SH)),
        )
    )
    return _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def write_file_meta_info(
    fp: DicomIO, file_meta: FileMetaDataset | FileMetaFields, enforce_standard: bool = True
) -> None:
    """Stands in for pydicom's `write_file_meta_info` where pynetdicom writes a received file."""
    if isinstance(file_meta, FileMetaFields):
        try:
            fp.write(file_meta_bytes(file_meta))
            return
        except Unwritten:
            file_meta = dsutils.create_file_meta(**file_meta._asdict())
    pydicom_write_file_meta_info(fp, file_meta, enforce_standard)


# ---- C-STORE-RSP (PS3.7 9.3.1.2), always Implicit VR Little Endian (PS3.7 6.3.1)


def c_store_response(
    message_id: int, sop_class: str | None, sop_instance: str | None, status: int, error_comment: str | None
) -> bytes:
    """The encoded command set of a C-STORE-RSP (PS3.7 Table 9.3-2, elements in tag order), the bytes
    pynetdicom's `C_STORE_RSP.encode_msg` gives for these values; an element whose value is None is
    left out, as pynetdicom leaves it out. Raises Unwritten for what pydicom would encode differently."""
    if not (0 <= message_id <= 0xFFFF and 0 <= status <= 0xFFFF):
        raise Unwritten("US")
    parts = []
    if sop_class is not None:
        parts.append(command_element(0x0002, _uid(sop_class)))
    parts.append(command_element(0x0100, us_value(C_STORE_RSP_FIELD)))
    parts.append(command_element(0x0120, us_value(message_id)))
    parts.append(command_element(0x0800, us_value(NO_DATA_SET)))
    parts.append(command_element(0x0900, us_value(status)))
    if error_comment is not None:
        parts.append(command_element(0x0902, _text(error_comment, MAX_LO)))
    if sop_instance is not None:
        parts.append(command_element(0x1000, _uid(sop_instance)))
    return command_set(parts)


def _response_command(primitive: Any) -> bytes | None:
    """The command set of `primitive` when it is a C-STORE response encoded here, else None."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.OffendingElement is not None or type(primitive.Status) is not int:
        return None
    try:
        return c_store_response(
            primitive.MessageIDBeingRespondedTo,
            primitive.AffectedSOPClassUID,
            primitive.AffectedSOPInstanceUID,
            primitive.Status,
            primitive.ErrorComment,
        )
    except Unwritten:
        return None


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """The P-DATA-TF PDU carrying `command` as one last command fragment (PS3.8 9.3.5, E.2): the bytes
    pynetdicom's `P_DATA_TF(primitive).encode()` gives for that primitive."""
    item = PDV_HEADER.pack(len(command) + 2, context_id) + LAST_COMMAND_FRAGMENT + command
    return PDU_HEADER.pack(P_DATA_TF_TYPE, 0, len(item)) + item


def send_store_responses_directly(assoc: Association) -> None:
    """Make `assoc` send each C-STORE response as the one P-DATA PDU pynetdicom would send for it
    (`DIMSEMessage.encode_msg`: command set, one fragment when it fits the peer's maximum PDU).

    A response made in the DUL thread itself (a request served where it was received, `dimse_serve`)
    is written to the socket there and then, as the state machine's DT-1 writes a P-DATA-TF in Sta6,
    rather than queued for that same thread to find on its next pass; unless something is queued to
    go before it, or a handler wants to see the PDU or the state machine's transition."""
    dimse = assoc.dimse
    dul = dimse.dul
    pynetdicom_send: Callable[[Any, int], None] = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        command = _response_command(primitive)
        max_pdu = dimse.maximum_pdu_size
        if (
            command is None
            or (max_pdu and len(command) + PDV_OVERHEAD > max_pdu)
            or assoc.get_handlers(evt.EVT_DIMSE_SENT)  # someone wants the message object
        ):
            pynetdicom_send(primitive, context_id)
            return
        if (
            threading.current_thread() is dul
            and dul.to_provider_queue.empty()
            and dul.state_machine.current_state == "Sta6"
            and not assoc.get_handlers(evt.EVT_PDU_SENT)
            and not assoc.get_handlers(evt.EVT_FSM_TRANSITION)
        ):
            cast(AssociationSocket, dul.socket).send(p_data_tf(context_id, command))  # fails as Evt17, as DT-1
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
        dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]


def without_log_handlers(assoc: Association) -> None:
    """Unbind pynetdicom's debug-log handlers (bound to every association by default) from `assoc`."""
    for event, handler in LOG_HANDLERS:
        assoc.unbind(event, handler)

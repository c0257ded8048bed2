"""How ingest's C-STORE SCP takes in a data set: each P-DATA-TF PDU is read once into one buffer, and its
data fragments go from there to the received file.

pynetdicom copies every received PDU about five times before its data set bytes reach the file: the
socket's pieces are joined, the whole PDU is copied to `bytes` (for EVT_DATA_RECV, even with no
handler bound), the PDU body, each presentation data value and then each fragment without its control
header are sliced off again (PS3.8 9.3.5.1, E.2), and the file is flushed after every fragment. At
~527 KB per CT instance that is megabytes of copying and a flush per PDU, in the DUL thread of each
association (issue 10, ingest's CPU). Here, for P-DATA-TF PDUs only, the body is received into one
buffer (`recv_into`), its presentation data values are memoryviews of it, and a data fragment is
written to the file from that view; the file starts with the zero preamble, "DICM" and the meta group
in one write (`dimse_encoding.file_meta_bytes`), so acceptance does not rewrite the preamble. Every
byte written is also fed to the file's SHA-256 (`received_sha256`), so the blob store does not read
the file back to hash it: one write, no second read (issue 10).

A sender writes a data set as PDUs back to back (`storescu`: 128 KiB each), so when a body is read
the next PDU's header is usually in the socket already. The body's receive asks for those 6 bytes
too and keeps what came (`PduReader`); the next PDU is then read at once, without the reactor's
`select` on the socket and without a receive of its own for the header. Bytes kept count as the
socket being readable, exactly as they did while still in it (pynetdicom reads a PDU whenever the
socket is readable, in any state).

Everything else is pynetdicom's: association PDUs, release and abort, the state machine, command set
decoding (an ordinary C-STORE-RQ's values are read by `command_sets`, the same values without pydicom's
element conversion), what goes to the service class and the handler, and how malformed PDUs end the association
(the same events, Evt17 and Evt19, for the same faults). An association with a handler bound to
EVT_DATA_RECV or EVT_PDU_RECV (which want pynetdicom's PDU objects) is received by pynetdicom.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import struct
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from services.common.dicom.part10 import PREAMBLE_BYTES
from services.ingest import command_sets, dimse_encoding
from services.ingest.received_files import ReceivedFile

log = logging.getLogger(__name__)

P_DATA_TF_TYPE = 0x04  # PS3.8 Table 9-22
PDU_TYPES = range(0x01, 0x08)  # PS3.8 9.3.1: A-ASSOCIATE-RQ .. A-ABORT
PDU_HEADER = struct.Struct(">BBL")
PDV_LENGTH = struct.Struct(">L")
# A P-DATA-TF body up to this size is received into a buffer of its announced length; a longer one
# (over any maximum PDU ingest negotiates) is read piece by piece as pynetdicom reads it, so that a
# length the peer merely claims never allocates memory that did not arrive.
PREALLOCATED_MAX = 4 * 1024 * 1024
HEADER_AHEAD = 6  # a PDU header (PS3.8 9.3.1): read with the body before it when already received
# The longest association, release or abort PDU taken: an A-ASSOCIATE-RQ proposing 128 presentation
# contexts with ten transfer syntaxes each is ~40 KB.
CONTROL_PDU_MAX = 1024 * 1024
_PREFIX = bytes(PREAMBLE_BYTES) + b"DICM"
_COMMAND_LAST = 0x03  # PS3.8 E.2 message control header bits: command, last fragment
_NO_DATA_SET = 0x0101  # PS3.7 Table E.1-1 Command Data Set Type


class Malformed(ValueError):
    """The PDU's presentation data values do not add up to its length (pynetdicom raises too)."""


class ReceivedPData(P_DATA_TF):
    """A P-DATA-TF PDU as received here: its P-DATA primitive is built already, views into its buffer."""

    def __init__(self, values: list[tuple[int, memoryview]]) -> None:
        super().__init__()
        self._values = values

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # As pynetdicom's own to_primitive: the list is filled in place, not through the checking setter.
        primitive.presentation_data_value_list.extend(cast(list[tuple[int, bytes]], self._values))
        return primitive


class StoreRequest(C_STORE_RQ):
    """A C-STORE-RQ whose values `command_sets` read: its `command_set` (pydicom's data set, which the
    store itself never needs; ~17 us per instance) is decoded from its encoded bytes when first asked
    for (a handler on EVT_DIMSE_RECV, `missing_data_sets`), the same data set pynetdicom decodes."""

    @property
    def command_set(self) -> Any:
        decoded = self.__dict__.get("command_set")
        if decoded is None:
            decoded = self.__dict__["command_set"] = decode(self.encoded_command_set, True, True)
        return decoded

    @command_set.setter
    def command_set(self, value: Any) -> None:
        self.__dict__["command_set"] = value


def presentation_data_values(body: bytearray) -> list[tuple[int, memoryview]]:
    """The (context id, value) items of a P-DATA-TF body after its 6-byte PDU header (PS3.8 9.3.5.1);
    each value starts with its message control header. Raises Malformed where pynetdicom's decoder
    fails (an item length of 0, or past the end)."""
    view = memoryview(body)
    values = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 5:
            raise Malformed("presentation data value item")
        (length,) = PDV_LENGTH.unpack_from(body, offset)
        if length < 1 or offset + 4 + length > end:
            raise Malformed("presentation data value item length")
        values.append((body[offset + 4], view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return values


def _read_into(raw: Any, length: int, on_bytes: Callable[[int], None] = lambda n: None) -> tuple[bytearray, bytes]:
    """`length` bytes from the socket into one buffer (fewer when the peer closed first), and up to
    `HEADER_AHEAD` bytes after them that were already there: the start of the next PDU. `on_bytes` hears
    of each piece as it arrives."""
    buffer = bytearray(length + HEADER_AHEAD)
    view = memoryview(buffer)
    got = 0
    while got < length:
        # Each call returns what has arrived, never waiting for the bytes past `length`.
        n = raw.recv_into(view[got:])
        if not n:
            break
        got += n
        on_bytes(n)
    view.release()
    ahead = bytes(buffer[length:got])
    del buffer[min(got, length) :]
    return buffer, ahead


class PduReader:
    """`DULServiceProvider._read_pdu_data`, with P-DATA-TF PDUs received as described in the module doc.

    A sender such as `storescu` writes a data set as PDUs back to back (128 KiB each from the bench's):
    the next PDU's header is usually in the socket already when a body is read, so the body's receive
    asks for 6 more bytes and keeps what came (`pending`). The next PDU is then read without the
    reactor's `select` and without a receive of its own for the header (`has_pending`): per 527 KB
    instance, four fewer of each, and of the GIL hand-overs around them.

    The events queued are pynetdicom's for the same input: Evt17 when the connection closes or fails
    before a whole PDU arrived, Evt19 for an unknown type or a PDU that does not decode, Evt10 for a
    P-DATA-TF and the type's own event for any other PDU (decoded by pynetdicom).
    """

    def __init__(self, dul: Any, max_data_pdu: int | None = None) -> None:
        self._dul = dul
        self.pending = b""  # the first bytes of the peer's next PDU, received with the last body
        # Bytes of PDU bodies received so far, counted as they arrive: a data set's first PDU on a slow link
        # takes seconds before any of it is written to its file, and the watch for missing data sets
        # (missing_data_sets.py) took that for no data set at all and answered the store as empty.
        self.received = 0
        # The longest PDU this reader takes: a PDU's length is the peer's to claim (up to 4 GiB), and it
        # was held whole in memory, twice, even an A-ASSOCIATE-RQ from a caller not yet checked.
        # P-DATA-TF up to twice what this acceptor said it receives (slack for senders that overshoot
        # it; None: no limit was set, none is kept), any other PDU up to CONTROL_PDU_MAX.
        self._max_data_pdu = None if not max_data_pdu else max(2 * max_data_pdu, CONTROL_PDU_MAX)

    def has_pending(self) -> bool:
        """True when bytes of the next PDU are held here: the socket counts as readable, as it did
        for pynetdicom with those bytes still in it. Dropped once the connection is closed."""
        if self.pending and not getattr(self._dul.socket, "_is_connected", False):
            self.pending = b""
        return bool(self.pending)

    def _header(self, sock: AssociationSocket) -> bytes | bytearray:
        pending, self.pending = self.pending, b""
        if len(pending) >= 6:
            return pending
        return pending + sock.recv(6 - len(pending)) if pending else sock.recv(6)

    def _count(self, n: int) -> None:
        self.received += n

    def read(self) -> None:
        dul = self._dul
        sock = cast(AssociationSocket, dul.socket)
        try:
            header = self._header(sock)
            pdu_type, _, pdu_length = PDU_HEADER.unpack(header)
        except (OSError, TimeoutError):
            log.error("Connection closed before the entire PDU was received")
            dul.event_queue.put("Evt17")
            return
        except struct.error:
            dul.event_queue.put("Evt17")
            return
        if pdu_type not in PDU_TYPES:
            log.error("Unknown PDU type received", extra={"pdu_type": f"0x{pdu_type:02X}"})
            dul.event_queue.put("Evt19")
            return
        limit = self._max_data_pdu if pdu_type == P_DATA_TF_TYPE else CONTROL_PDU_MAX
        if limit is not None and pdu_length > limit:  # not read: aborted (Evt19) as an invalid PDU
            log.error(
                "PDU longer than this acceptor takes", extra={"pdu_type": f"0x{pdu_type:02X}", "bytes": pdu_length}
            )
            dul.event_queue.put("Evt19")
            return
        raw = sock.socket
        try:
            if pdu_type == P_DATA_TF_TYPE and pdu_length <= PREALLOCATED_MAX and raw is not None:
                body, self.pending = _read_into(raw, pdu_length, self._count)
            else:
                # Counted once whole: a first PDU over 4 MiB (IMX_DICOM_MAX_PDU above 2 MiB, or 0) on a link
                # slow enough to take IMX_DICOM_DATA_SET_WAIT_S over it is still taken for no data set.
                body = sock.recv(pdu_length)
                self._count(len(body))
        except (OSError, TimeoutError):
            log.error("Connection closed before the entire PDU was received")
            dul.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            log.error("The received PDU is shorter than expected")
            dul.event_queue.put("Evt17")
            return
        try:
            if pdu_type == P_DATA_TF_TYPE:
                pdu: Any = ReceivedPData(presentation_data_values(body))
                event = "Evt10"
            else:
                pdu, event = dul._decode_pdu(bytearray(header) + body)
        except Exception:
            log.error("Unable to decode the received PDU data")
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)


def read_pdu_data(dul: Any) -> None:
    """One PDU as `PduReader.read` reads it, holding nothing read ahead (tests)."""
    PduReader(dul).read()


def decode_msg(message: DIMSEMessage, primitive: P_DATA, assoc: Association | None = None) -> bool:
    """`DIMSEMessage.decode_msg` for ingest's associations (which receive C-STORE data sets to files,
    `scp.receive_to_files`): fragments written from the received buffer, the file's first bytes in one
    write, one flush when the data set is complete. Returns True when the message is complete."""
    if type(primitive) is not P_DATA:
        return False
    msg: Any = message
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if control & 1:  # command set fragment
            msg.encoded_command_set.write(data[1:])
            if control & 2:
                msg.context_id = context_id
                store = msg.imx_store_command = command_sets.read_store_command(msg.encoded_command_set.getvalue())
                if store is not None:  # the same values, not read through pydicom (command_sets)
                    msg.__dict__.pop("command_set", None)  # the empty data set DIMSEMessage starts with
                    msg.__class__ = StoreRequest
                    data_set_type = store.command_data_set_type
                else:
                    msg.command_set = decode(msg.encoded_command_set, True, True)
                    msg.__class__ = dimse_messages._MESSAGE_TYPES[cast(int, msg.command_set.CommandField)][1]
                    data_set_type = msg.command_set.CommandDataSetType
                if data_set_type == _NO_DATA_SET:
                    return True
                if _config.STORE_RECV_CHUNKED_DATASET and isinstance(msg, C_STORE_RQ):
                    _start_file(msg, context_id, cast(Association, assoc))
        else:  # data set fragment
            file = msg._data_set_file
            if file is not None:
                piece = data[1:]
                file.write(piece)
                if not getattr(file, "over_limit", False):  # past its limit it is refused unread: no hash
                    file.imx_sha256.update(piece)
                if control & 2:
                    file.file.flush()
                    if isinstance(file, ReceivedFile):
                        file.received()  # no longer on its way for the group commit (received_files)
            else:
                cast(BytesIO, msg.data_set).write(data[1:])
            if control & 2:
                return True
    return False


def _start_file(msg: Any, context_id: int, assoc: Association) -> None:
    """Open the data set's file (pynetdicom's temporary file, in the folder `receive_to_files` set) and
    write the zero preamble, "DICM" and the meta group pynetdicom would write (PS3.10 7.1)."""
    file = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    # Until its file meta is written, the file holds no data set: the watch for missing data sets
    # (missing_data_sets.py), on another thread, counts only what comes after `imx_data_starts_at`.
    cast(Any, file).imx_data_starts_at = None
    msg._data_set_file = file
    msg._data_set_path = Path(file.name)
    store: command_sets.StoreCommand | None = msg.imx_store_command
    if store is not None:
        class_uid, instance_uid = store.affected_sop_class_uid, store.affected_sop_instance_uid
    else:
        command = msg.command_set
        class_uid, instance_uid = cast(UID, command.AffectedSOPClassUID), cast(UID, command.AffectedSOPInstanceUID)
    fields = dimse_encoding.FileMetaFields(
        class_uid,
        instance_uid,
        assoc._accepted_cx[context_id].transfer_syntax[0],
        dimse_encoding.PYNETDICOM_IMPLEMENTATION_UID,
        dimse_encoding.PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    try:
        first = _PREFIX + dimse_encoding.file_meta_bytes(fields)
        file.write(first)
    except dimse_encoding.Unwritten:  # what pydicom writes differently, it writes (dimse_encoding)
        file.write(_PREFIX)
        dimse_encoding.write_file_meta_info(file, fields)  # type: ignore[arg-type]  # as pynetdicom passes it
        file.file.flush()
        first = Path(file.name).read_bytes()  # those few bytes, as pydicom wrote them
    # The file's SHA-256 grows with every write (decode_msg), so acceptance need not read the file
    # again to hash it (`received_sha256`).
    cast(Any, file).imx_sha256 = hashlib.sha256(first)
    cast(Any, file).imx_data_starts_at = file.tell()


def received_sha256(request: object) -> str | None:
    """The SHA-256 of a C-STORE request's data set file, hashed here as it was written; None when the
    file was not written here (pynetdicom's own receive path) or the request has none."""
    hasher = getattr(getattr(request, "_dataset_file", None), "imx_sha256", None)
    return hasher.hexdigest() if hasher is not None else None


def new_message() -> DIMSEMessage:
    """A DIMSE message decoded by `decode_msg` (an instance attribute: it stays when decode_msg changes
    the message's class)."""
    message = DIMSEMessage()
    message.decode_msg = functools.partial(decode_msg, message)  # type: ignore[method-assign]
    return message


def drop_abandoned_data_set(assoc: Association) -> None:
    """Have `assoc` (an acceptor, before its DUL starts) close and remove, when its DUL thread ends,
    the file of a C-STORE data set it was still receiving (`ReceivedFile.abandon`).

    The DUL thread is the only one that writes a data set's file (P-DATA is decoded there, by this
    module or by pynetdicom), and pynetdicom takes a message off `dimse.message` as soon as it is
    complete: the one still there when that thread ends (release, A-ABORT, a dropped connection, the
    network timeout, a kill) is a data set that never completed and was never handed to acceptance.
    Nothing else is changed, per association or per instance."""
    dul = assoc.dul
    run_dul = dul.run
    dimse = assoc.dimse

    def run_then_drop() -> None:
        try:
            run_dul()
        finally:
            message = dimse.message
            file = getattr(message, "_data_set_file", None)
            if isinstance(file, ReceivedFile):
                dimse.message = None  # as pynetdicom leaves it after a message; `missing_data_sets` skips it
                if file.abandon():
                    log.info(
                        "c-store transfer abandoned midway: its partial file removed",
                        extra={"calling_ae": assoc.requestor.ae_title.strip(), "bytes": file.size},
                    )

    dul.run = run_then_drop  # type: ignore[method-assign]


def receive_directly(assoc: Association) -> bool:
    """Make `assoc` (an acceptor, before its DUL starts) receive P-DATA-TF PDUs and C-STORE data sets
    as described in the module doc, unless a handler wants pynetdicom's PDU objects (then False)."""
    if assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV):
        return False
    dul = assoc.dul
    reader = PduReader(dul, assoc.ae.maximum_pdu_size)
    assoc.imx_pdu_reader = reader  # type: ignore[attr-defined]  # what missing_data_sets asks
    dul._read_pdu_data = reader.read  # type: ignore[method-assign]
    transport_event = dul._is_transport_event

    def is_transport_event() -> bool:
        """`_is_transport_event`, reading a PDU at once when its first bytes are held here (the
        reactor would wait for the socket, where they no longer are)."""
        if reader.has_pending():
            reader.read()
            return True
        return bool(transport_event())

    dul._is_transport_event = is_transport_event  # type: ignore[method-assign]
    dimse = assoc.dimse
    receive_primitive = dimse.receive_primitive

    def receive(primitive: P_DATA) -> None:
        if dimse.message is None:
            dimse.message = new_message()
        receive_primitive(primitive)

    dimse.receive_primitive = receive  # type: ignore[method-assign]
    return True

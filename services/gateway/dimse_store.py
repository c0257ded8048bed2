"""The DIMSE target: C-STORE through pynetdicom 3 as SCU, one association reused across instances.

The delivered object is sent as it is: the C-STORE request is built here, its command set encoded
directly (`c_store_command`) and its data set, after its meta group, sent from the fetched bytes
where they are (fetched.py: objects up to 4 MiB are held in memory), or read from the file a MiB at a
time, and framed as pynetdicom's `DIMSEMessage.encode_msg` frames it (`message_pdus`), so nothing is
decoded or re-encoded and a large file is never held whole in memory. The sending thread writes the P-DATA-TF
PDUs to the association's socket itself (services/gateway/pdu_writer.py) and reads the C-STORE-RSP off
it itself (services/gateway/dimse_exchange.py), not through pynetdicom's DUL thread (`send_request`
and the DIMSE queue, kept for a socket that cannot take them directly and for any answer but a plain
response). The one exception is a
deflated data set of odd length: it is sent from a copy padded with one NUL byte, as PS3.5 A.5 has it
written (dcmtk aborts on an odd last fragment). `Association.send_c_store` would read the file with
pydicom and encode it again (~3.7 ms per CT, FIELD-NOTES), or, with the process-wide
`_config.STORE_SEND_CHUNKED_DATASET`, change every other sender in the process too.

Presentation contexts: for each SOP class seen, the delivered transfer syntax plus explicit and
implicit VR little endian, each its own context, so the PACS can accept the delivered one and a
fallback independently. Only when it accepts no context in the delivered syntax is the instance
converted: a deflated one to explicit VR little endian by inflating its body a piece at a time into a
file beside it (PS3.5 A.5; a few hundred KB of deflate can inflate to a GiB, which decoding would hold
several times over), any other with pydicom (uncompressed to uncompressed; compressed ones
decompressed if a pixel handler can), else the failure is permanent. PDUs are as large as the PACS allows (its maximum
length from the A-ASSOCIATE-AC; pynetdicom fragments to it), and are handed to pynetdicom's sending
thread at most QUEUED_PDUS ahead of the socket (`send_request`), so a send holds about 1 MiB whatever
the instance's size (before: up to ~300 MB for a 768 MiB instance, read ahead of a slower PACS).

An association that ends during a C-STORE is told apart by associating again: a PACS that cannot be
reached is waited for; one that takes the new association aborted that instance (`ABORTED`, few attempts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BufferedReader, BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

from services.common.dicom.association_waits import WaitingAE, socket_turn
from services.common.dicom.command_set import command_element, command_set, ui_value, us_value
from services.common.dicom.sender_responses import keep_responses_for_sender
from services.gateway.dimse_exchange import (
    answer_from_dul,
    exchange_in_turn,
    pdu_size,
    plain_socket,
    send_request,
    settled,
)
from services.gateway.dimse_responses import NoResponse, read_store_responses_directly
from services.gateway.fetched import Fetched
from services.gateway.file_meta import plain_meta_of
from services.gateway.pdu_writer import SendStalled, send_direct
from services.gateway.scratch_files import new_scratch_file
from services.gateway.targets import ABORTED, DicomTarget, StoreResult, TargetKind
from services.proto_gen.imx.v1 import events_pb2

log = logging.getLogger(__name__)

FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
UNCOMPRESSED = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context ids are odd numbers 1-255
# PS3.7 C.1-C.4: the general warnings (optional attributes unsupported, attribute list error, value out of
# range) and the service-specific warning range, PS3.4 B.2.3's 0xB000/0xB006/0xB007 among them. A warning
# means stored: dead-lettered, the partner was told DEAD_LETTERED about an instance its PACS holds, and a
# replay stored it again.
GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


def is_warning(status: int) -> bool:
    return status in GENERAL_WARNINGS or 0xB000 <= status <= 0xBFFF


def status_result(status: int | None) -> StoreResult:
    """A C-STORE response status as a StoreResult (PS3.4 Annex B.2.3, PS3.7 Annex C)."""
    if status is None:
        return StoreResult.failed("no-status", retryable=True)
    detail = f"0x{status:04X}"
    if status == 0x0000 or is_warning(status):
        return StoreResult.stored(detail)
    if 0xA700 <= status <= 0xA7FF:  # out of resources: the PACS may have room later
        return StoreResult.failed(detail, retryable=True)
    return StoreResult.failed(detail, retryable=False)


def contexts_for(needs: dict[str, list[str]]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax): the delivered syntaxes first, then the fallbacks.
    The most recently needed SOP classes win when there are more than 128."""
    pairs: list[tuple[str, str]] = []
    for sop_class, syntaxes in reversed(list(needs.items())):
        wanted = [*dict.fromkeys([*syntaxes, *FALLBACK_SYNTAXES])]
        if len(pairs) + len(wanted) > MAX_CONTEXTS:
            break
        pairs.extend((sop_class, ts) for ts in wanted)
    return [build_context(sop_class, ts) for sop_class, ts in pairs]


INFLATE_PIECE = 1024 * 1024


def inflated_copy(path: Path, offset: int) -> Path:
    """The deflated data set of `path` (from `offset`) inflated into a file beside it: Deflated
    Explicit VR Little Endian is the explicit VR little endian data set deflated (PS3.5 A.5), so this is
    the conversion, with nothing decoded and at most a piece of it in memory at a time."""

    def inflate(source: BinaryIO, out: BinaryIO) -> None:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pending = b""
        while not inflater.eof:
            pending = pending or source.read(INFLATE_PIECE)
            if not pending:
                break
            out.write(inflater.decompress(pending, INFLATE_PIECE))  # input kept back for more output
            pending = inflater.unconsumed_tail
        out.write(inflater.flush())

    return _scratch_copy(path, offset, inflate)


def padded_copy(path: Path, offset: int) -> Path:
    """The data set of `path` (from `offset`) with one NUL byte after it, in a file beside it. A
    deflated data set is padded to even length (PS3.5 A.5, as pydicom and dcmtk write it); sent odd,
    the last PDV fragment is odd and dcmtk's storescp aborts the association ("Odd Fragment Length")."""

    def pad(source: BinaryIO, out: BinaryIO) -> None:
        shutil.copyfileobj(source, out, INFLATE_PIECE)
        out.write(b"\x00")

    return _scratch_copy(path, offset, pad)


def _scratch_copy(path: Path, offset: int, fill: Callable[[BinaryIO, BinaryIO], None]) -> Path:
    """`fill` from `path` (read from `offset`) into a new temp file beside it, named as the fetched
    files are (scratch_files.py), so a gateway killed while sending it has it removed at its next start
    (an inflated copy can be GiBs)."""
    fd, target = new_scratch_file(path.parent)
    try:
        with path.open("rb") as source, os.fdopen(fd, "wb") as out:
            source.seek(offset)
            fill(source, out)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


class _Unchecked:
    """How many stores are in their window, and pydicom's modes from before the first of them."""

    lock = threading.Lock()
    stores = 0
    modes: tuple[int, int] = (0, 0)


@contextlib.contextmanager
def values_unchecked() -> Iterator[None]:
    """pydicom's value checks off while the gateway reads and converts an instance: they warn with the value
    itself ("Invalid value for VR UI: '<the UID>'", names, dates) on stderr, and the gateway passes on what
    it was sent, as it was sent, printing no patient data. pydicom's modes are the process's: with the
    central gateways' partner workers storing at once, they are set by the first store in progress and
    restored by the last, so no store runs with them back on while another is still in its window."""
    settings = pydicom_config.settings
    with _Unchecked.lock:
        if _Unchecked.stores == 0:
            _Unchecked.modes = (settings.reading_validation_mode, settings.writing_validation_mode)
            settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
        _Unchecked.stores += 1
    try:
        yield
    finally:
        with _Unchecked.lock:
            _Unchecked.stores -= 1
            if _Unchecked.stores == 0:
                settings.reading_validation_mode, settings.writing_validation_mode = _Unchecked.modes


def converted(source: Fetched, transfer_syntax: UID) -> bytes:
    """The data set of `source` encoded in `transfer_syntax` (uncompressed); raises when pydicom cannot."""
    with source.open() as handle:
        ds = dcmread(handle)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        # Same instance, other encoding: pydicom would otherwise give it a new SOP Instance UID.
        ds.decompress(generate_instance_uid=False)  # raises when no pixel handler decodes this syntax
    encoded = encode(ds, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian, transfer_syntax.is_deflated)
    if encoded is None:
        raise ValueError("pynetdicom could not encode the data set")
    return encoded


C_STORE_RQ_FIELD = 0x0001  # PS3.7 Table E.1-1 Command Field
DATA_SET_PRESENT = 0x0001  # PS3.7 Table E.1-1 Command Data Set Type: anything but 0x0101
LOW = 0x0002  # PS3.7 Table 9.1-1 Priority (pynetdicom's send_c_store default, sent before too)


def c_store_command(message_id: int, sop_class: str, sop_instance: str, priority: int = LOW) -> bytes:
    """The encoded command set of a C-STORE-RQ (PS3.7 9.3.1.1, Table 9.1-1), the same bytes as
    pynetdicom's `C_STORE_RQ.encode_msg` gives for these values: built directly, since pydicom's
    writer spends ~1 ms per instance on six elements (its character-set lookup, twice per message)."""
    return command_set(
        (
            command_element(0x0002, ui_value(sop_class)),
            command_element(0x0100, us_value(C_STORE_RQ_FIELD)),
            command_element(0x0110, us_value(message_id)),
            command_element(0x0700, us_value(priority)),
            command_element(0x0800, us_value(DATA_SET_PRESENT)),
            command_element(0x1000, ui_value(sop_instance)),
        )
    )


class DimseStore:
    kind: TargetKind = "dicom"

    def __init__(self, target: DicomTarget, dimse_timeout_s: float = 60, connect_timeout_s: float = 10) -> None:
        self._target = target
        # Its associations wait for work instead of polling every 1 ms (issue 10).
        self._ae = WaitingAE(ae_title=target.calling_ae)
        self._ae.acse_timeout = connect_timeout_s
        self._ae.connection_timeout = connect_timeout_s
        self._ae.dimse_timeout = dimse_timeout_s
        self._ae.network_timeout = max(dimse_timeout_s, 60)
        self._ae.maximum_pdu_size = 0  # what we accept: responses are small, take whatever the peer sends
        self._needs: dict[str, list[str]] = {}  # SOP class → syntaxes, in the order of their last use
        self._proposed: set[tuple[str, str]] = set()  # what the open association proposed
        self._assoc: Association | None = None
        self._message_id = 0
        self.associations = 0  # how many were opened (status and tests)

    @property
    def peer_max_pdu(self) -> int | None:
        return self._assoc.acceptor.maximum_length if self._assoc else None

    def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
        with values_unchecked():
            return self._store(source, delivery)

    def _store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
        try:
            sop_class, sop_instance, syntax_uid, offset = plain_meta_of(source) or _meta_by_pydicom(source)
            syntax = UID(syntax_uid)
        except Exception:  # not Part 10 or no meta group: nothing to send, ever
            return StoreResult.failed("no-file-meta", retryable=False)
        down = self._associated_for(sop_class, syntax)
        if down is not None:
            return down
        assert self._assoc is not None
        exact = self._accepted(sop_class, syntax)
        if exact is not None:
            if syntax == DeflatedExplicitVRLittleEndian and (source.size - offset) % 2:
                return self._send_copy(exact, sop_class, sop_instance, padded_copy, source, offset)
            return self._send(exact, sop_class, sop_instance, (source, offset))
        fallback = next((c for ts in FALLBACK_SYNTAXES if (c := self._accepted(sop_class, ts))), None)
        if fallback is None:
            return StoreResult.failed("sop-class-not-accepted", retryable=False)
        target_syntax = UID(fallback.transfer_syntax[0])
        if syntax == DeflatedExplicitVRLittleEndian and target_syntax == ExplicitVRLittleEndian:
            return self._send_copy(fallback, sop_class, sop_instance, inflated_copy, source, offset)
        try:
            data = converted(source, target_syntax)
        except Exception:
            return StoreResult.failed(f"cannot-convert-to-{target_syntax}", retryable=False)
        return self._send(fallback, sop_class, sop_instance, data)

    def _send_copy(
        self,
        context: PresentationContext,
        sop_class: str,
        sop_instance: str,
        make_copy: Callable[[Path, int], Path],
        source: Fetched,
        offset: int,
    ) -> StoreResult:
        """Send the data set from a file `make_copy` writes beside the delivered one (removed after)."""
        try:
            copy = make_copy(source.on_disk(), offset)
        except zlib.error:  # the deflate stream is broken: it never will convert
            return StoreResult.failed(f"cannot-convert-to-{ExplicitVRLittleEndian}", retryable=False)
        except OSError:  # the disk, not the instance
            return StoreResult.failed("copy-write-failed", retryable=True)
        try:
            return self._send(context, sop_class, sop_instance, (Fetched.in_file(copy), 0))
        finally:
            copy.unlink(missing_ok=True)

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None
        self._ae.shutdown()

    def _associated_for(self, sop_class: str, syntax: str) -> StoreResult | None:
        """Ensure an association that proposed (sop_class, syntax); a StoreResult when there is none."""
        # Last used, last in: contexts_for keeps the most recent classes when they outnumber 128 contexts,
        # and the class in hand is always among them (ordered by first need, the earliest class fell out
        # after ~64 others and was dead-lettered as not accepted until the process restarted).
        syntaxes = self._needs.pop(sop_class, [])
        self._needs[sop_class] = syntaxes if syntax in syntaxes else [*syntaxes, syntax]
        if (sop_class, syntax) not in self._proposed:
            self._drop_association()
        if self._assoc is not None and settled(self._assoc):
            return None
        self._drop_association()
        contexts = contexts_for(self._needs)
        try:
            assoc = self._ae.associate(
                self._target.host, self._target.port, contexts=contexts, ae_title=self._target.called_ae
            )
        except OSError as error:  # a name that does not resolve (DNS away, a typo): the PACS is unreachable
            log.warning("pacs address not resolved", extra={"error": type(error).__name__})
            return StoreResult.down("address-not-resolved")
        self._proposed = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in contexts}
        if not assoc.is_established:
            return StoreResult.down("association-rejected" if assoc.is_rejected else "connection-failed")
        keep_responses_for_sender(assoc)
        read_store_responses_directly(assoc)
        self._assoc = assoc
        self.associations += 1
        return None

    def _accepted(self, sop_class: str, syntax: str) -> PresentationContext | None:
        assert self._assoc is not None
        for context in self._assoc.accepted_contexts:
            if context.abstract_syntax == sop_class and context.transfer_syntax[0] == syntax:
                return context
        return None

    def _drop_association(self) -> None:
        self._proposed = set()
        if self._assoc is not None:
            if self._assoc.is_established:
                self._assoc.release()
            self._assoc = None

    def _send(
        self,
        context: PresentationContext,
        sop_class: str,
        sop_instance: str,
        body: tuple[Fetched, int] | bytes,
    ) -> StoreResult:
        """Send one C-STORE request with the data set already encoded (the fetched object from its
        offset, or bytes) and wait for its response; mirrors `Association.send_c_store` of pynetdicom
        3.0 after its encoding step."""
        assoc = self._assoc
        assert assoc is not None
        self._message_id = self._message_id % 0xFFFF + 1
        command = c_store_command(self._message_id, sop_class, sop_instance)
        context_id, stall_s = int(context.context_id or 0), float(self._ae.network_timeout or 60)
        started = time.monotonic()
        sock, turn = plain_socket(assoc), socket_turn(assoc)
        try:
            if sock is not None and turn is not None:

                def send_direct_to(sock: socket.socket) -> None:
                    with _data_set(body) as (data_set, length):
                        send_direct(sock, command, data_set, length, context_id, pdu_size(assoc), stall_s)

                timeout_s = float(self._ae.dimse_timeout or 60)
                response = exchange_in_turn(assoc, turn, sock, lambda: send_direct_to(sock), timeout_s)
            else:

                def send_through_dul() -> None:
                    with _data_set(body) as (data_set, _):
                        readable = BytesIO(data_set) if isinstance(data_set, memoryview) else data_set
                        send_request(assoc, command, readable, context_id, stall_s)

                response = answer_from_dul(assoc, send_through_dul)
        except (SendStalled, NoResponse) as stopped:
            assoc.abort()
            self._assoc = None
            if isinstance(stopped, SendStalled):
                log.warning(
                    "the PACS took nothing for a while during a C-STORE",
                    extra={"seconds": round(time.monotonic() - started)},
                )
            else:
                log.warning("no C-STORE response in time", extra={"seconds": round(time.monotonic() - started)})
            return StoreResult.failed("dimse-timeout", retryable=True)
        except (OSError, RuntimeError, AttributeError):  # the socket went away under the send
            self._drop_association()
            return self._lost_during(sop_class, context)
        if response is None:
            # An abort or a closed connection shows as an empty answer long before the DIMSE timeout.
            waited = time.monotonic() - started
            if assoc.is_established:
                assoc.abort()
            self._assoc = None
            if waited < 0.9 * float(self._ae.dimse_timeout or 0):
                return self._lost_during(sop_class, context)
            log.warning("no C-STORE response in time", extra={"seconds": round(waited)})
            return StoreResult.failed("dimse-timeout", retryable=True)
        return status_result(getattr(response, "Status", None))

    def _lost_during(self, sop_class: str, context: PresentationContext) -> StoreResult:
        """The association ended during an instance's C-STORE: associating again tells why. A PACS that
        cannot be reached went away (waited for, no attempt spent); one that takes the new association
        ended this instance's transfer, as dcmtk does on a data set it cannot read (an odd-length PDV:
        "Odd Fragment Length", abort): that is its answer about the instance. Taken as "PACS away",
        such an instance was retried every 30 s for ever and held up the partner's whole feed."""
        if self._associated_for(sop_class, str(context.transfer_syntax[0])) is not None:
            return StoreResult.down("connection-lost")
        return StoreResult.failed(ABORTED, retryable=True)


@contextmanager
def _data_set(body: tuple[Fetched, int] | bytes) -> Iterator[tuple[BufferedReader | BytesIO | memoryview, int]]:
    """The data set to send and its length: bytes in memory as they are, else the file from its offset."""
    if isinstance(body, bytes):
        yield memoryview(body), len(body)
        return
    source, offset = body
    if source.data is not None:
        view = memoryview(source.data)[offset:]
        yield view, len(view)
        return
    assert source.path is not None
    with source.path.open("rb") as handle:
        length = os.fstat(handle.fileno()).st_size - offset
        handle.seek(offset)
        yield handle, length


def _not_group_0002(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def _meta_by_pydicom(source: Fetched) -> tuple[str, str, str, int]:
    """What `plain_meta_of` reads, for any meta group pydicom reads."""
    meta, offset = split_meta(source)
    return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), offset


def split_meta(source: Fetched) -> tuple[Dataset, int]:
    """The file meta group and the offset of the data set after it: pynetdicom's `split_dataset`, for
    an object in memory as well as in a file."""
    with source.open() as handle:
        read_preamble(handle, False)
        meta = read_dataset(handle, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_0002)
        return meta, handle.tell()

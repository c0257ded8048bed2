"""The C-STORE SCP (PS3.4 Annex B) and Verification SCP on pynetdicom.

Instances are taken as the bytes the peer sent: nothing is decoded or re-encoded, which is where a
Python receiver spends its time (FIELD-NOTES). pynetdicom writes each data set to a temporary Part 10
file as its PDUs arrive (`_config.STORE_RECV_CHUNKED_DATASET`, `event.dataset_path`), and acceptance
moves that file into the blob store, so an instance of any size (up to 1 GiB) is received in a few
PDUs of memory. The file is written in the blob store's folder (a `.tmp-` file, like the store's own
temporaries), so the move is a rename and no size-limited /tmp is filled. A success status goes back
only after the instance is stored and its event acknowledged by Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MPEGTransferSyntaxes,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.common.dicom.association_waits import WaitingRequestHandler
from services.common.ip_networks import peer_address
from services.common.stores.organisations import CallingOrg
from services.ingest import dimse_encoding, dimse_receive, dimse_serve
from services.ingest.acceptance import Acceptance, AcceptanceResult, Accepted, Channel, Duplicate, Expected
from services.ingest.calling_aets import CallingAeTitles
from services.ingest.errors import IngestUnavailable
from services.ingest.missing_data_sets import MissingDataSets
from services.ingest.received_files import ReceivedFile, ReceivedFiles
from services.ingest.settings import IngestSettings
from services.ingest.status_codes import (
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    error_comment,
    status_for_result,
)

log = logging.getLogger(__name__)

CHANNEL: Channel = "c-store"
# How late an association's network timeout (IMX_DICOM_TIMEOUT_S, tens of seconds) may be noticed.
REACTOR_WAIT_S = 0.5

# Uncompressed first (what most peers propose first), then the compressed syntaxes archives keep.
TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    JPEG2000MCLossless,
    JPEG2000MC,
    # Video (endoscopy, photography): pixel data are never decoded here, and STOW-RS took these already.
    *MPEGTransferSyntaxes,
]


def status_dataset(status: int, comment: str = "") -> Dataset:
    """A C-STORE response status; Error Comment (0000,0902) carries the reason code, never a value."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment
    return ds


class StoreHandler:
    """EVT_C_STORE handler; runs on the thread that received the request (`dimse_serve`), or on the
    association's thread, several associations at once."""

    def __init__(self, acceptance: Acceptance, calling_aets: CallingAeTitles) -> None:
        self._acceptance = acceptance
        self._calling_aets = calling_aets

    def __call__(self, event: Event) -> Dataset | int:
        def accept(org: str) -> AcceptanceResult:
            received = _received_file(event)
            # The instance the command names: a data set of another instance is refused (A900), not stored
            # under the command's UIDs in its file meta and the data set's in its event.
            request = cast(C_STORE, event.request)
            expected = Expected(
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            )
            if received is None:
                return self._acceptance.accept(event.encoded_dataset(), org, CHANNEL, expected=expected)
            # pynetdicom removes the file after this handler, unless acceptance moved it. Its preamble
            # is zeros: the receiver wrote it (dimse_receive, or pynetdicom), the sender sends none.
            # dimse_receive hashed it as it wrote it.
            file = request._dataset_file
            if isinstance(file, ReceivedFile) and file.over_limit:  # its first `limit` bytes only: not read
                return self._acceptance.reject_unread(org, CHANNEL, file.offered)
            if isinstance(file, ReceivedFile) and file.write_error:  # the disk full part way: try again
                raise IngestUnavailable(f"received data set not written: {file.write_error}")
            sha256 = dimse_receive.received_sha256(request)
            opened = (file.fd, file.size) if isinstance(file, ReceivedFile) and not file.closed else None
            result = self._acceptance.accept_file(
                received, org, CHANNEL, expected=expected, preamble_written_zero=True, sha256=sha256, received=opened
            )
            if file is not None and isinstance(result, (Accepted, Duplicate)):
                # Moved into the store (or found there and removed): closed here, and not handed back
                # to pynetdicom, whose removal of it could only fail.
                file.close()
                request._dataset_file = None
            return result

        status, comment = self._answer(event.assoc, accept)
        # A status without a comment goes back as a number (the same response): pynetdicom would read
        # a data set's elements one by one.
        return status_dataset(status, comment) if comment else status

    def missing_data_set(self, assoc: Association, part10: bytes) -> Dataset:
        """The answer to a C-STORE whose data set never came (`MissingDataSets`): `part10` is the
        file meta alone, accepted like any input so that its rejection is counted and quarantined."""
        return status_dataset(*self._answer(assoc, lambda org: self._acceptance.accept(part10, org, CHANNEL)))

    def _answer(self, assoc: Association, accept: Callable[[str], AcceptanceResult]) -> tuple[int, str]:
        """The status and Error Comment for `accept`'s outcome."""
        calling_ae = assoc.requestor.ae_title.strip()
        caller = self._calling_aets.caller(calling_ae)
        if caller is None and not self._calling_aets.loaded:  # MongoDB away since ingest started
            log.warning("c-store refused for now: calling AE titles not read yet", extra={"calling_ae": calling_ae})
            return OUT_OF_RESOURCES, "try-again-later"
        if caller is None:  # the organisation was removed while its association was open
            log.warning("c-store refused: unknown calling AE", extra={"calling_ae": calling_ae})
            return NOT_AUTHORIZED, "unknown-calling-ae"
        if not caller.admits(assoc.requestor.address):
            # The title is right, the place is not: someone who learnt it (it travels in the clear).
            log.warning(
                "c-store refused: calling AE from outside its organisation's networks",
                extra={
                    "calling_ae": calling_ae,
                    "org": caller.org_id,
                    "peer_address": peer_address(assoc.requestor.address),
                },
            )
            return NOT_AUTHORIZED, "calling-ae-not-from-its-networks"
        org = caller.org_id
        try:
            result = accept(org)
        except IngestUnavailable:
            log.warning("c-store failed: dependency unavailable", extra={"org": org, "channel": CHANNEL})
            return OUT_OF_RESOURCES, "try-again-later"
        except Exception:  # never let a bug look like success; the type is logged, not the text
            log.exception("c-store failed: unexpected error", extra={"org": org, "channel": CHANNEL})
            return PROCESSING_FAILURE, "processing-failure"
        return status_for_result(result), error_comment(result)


def _received_file(event: Event) -> Path | None:
    """The file pynetdicom wrote the data set to; None when it kept the data set in memory."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path else None


def receive_to_files(folder: Path, max_bytes: int | None = None) -> ReceivedFiles:
    """Have pynetdicom write received C-STORE data sets to files in `folder` instead of memory.

    Both are process-wide in pynetdicom 3 (its switch, and the NamedTemporaryFile it calls with no
    folder, i.e. /tmp); ingest is the only SCP in its process. A transfer abandoned midway has its
    `.tmp-` file closed and removed when its association ends (`IngestRequestHandler`); one left by a
    crash is removed by the blob collection once stale (`blob_lifecycle.STALE_TEMPORARY_S`). The file's
    meta group is
    written by `dimse_encoding` (the same bytes, without pydicom's writer); these two names are used
    by pynetdicom only where it starts such a file. Returns the files' maker, which counts the data
    sets still arriving (`ReceivedFiles.receiving`, for the group commit).
    """
    folder.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    files = ReceivedFiles(folder, ".tmp-c-store-", max_bytes)
    dimse_messages.NamedTemporaryFile = files  # type: ignore[assignment]
    dimse_messages.create_file_meta = dimse_encoding.create_file_meta  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = dimse_encoding.write_file_meta_info
    return files


class IngestRequestHandler(WaitingRequestHandler):
    """Each association waits for work (`WaitingRequestHandler`), sends its C-STORE responses encoded
    directly and has no debug-log handlers (services/ingest/dimse_encoding.py), receives P-DATA into
    one buffer per PDU, written to the data set's file from there (services/ingest/dimse_receive.py),
    serves its C-STORE requests in the thread that received them (services/ingest/dimse_serve.py),
    and closes and removes the file of a data set still arriving when its DUL thread ends
    (`dimse_receive.drop_abandoned_data_set`: issue 9, a sender's abort or dropped connection would
    otherwise keep its descriptor open and its partial file for the life of the process).

    That leaves the association thread nothing to do for a store: it is signalled for every message,
    release, abort and kill, and wakes unsignalled only to look at the network timeout, every
    `REACTOR_WAIT_S` rather than every 50 ms (each wake cost ~6 futex calls, mostly GIL handoffs)."""

    reactor_wait_s = REACTOR_WAIT_S

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        dimse_encoding.without_log_handlers(assoc)
        dimse_encoding.send_store_responses_directly(assoc)
        direct = dimse_receive.receive_directly(assoc)
        dimse_receive.drop_abandoned_data_set(assoc)
        dimse_serve.serve_stores_in_receiver(assoc, dimse_receive.new_message if direct else DIMSEMessage)
        return assoc


def _on_rejected(event: Event) -> None:
    log.info("association rejected", extra={"calling_ae": event.assoc.requestor.ae_title.strip()})


def build_ae(settings: IngestSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)  # C-ECHO is answered by pynetdicom's default handler
    ae.maximum_pdu_size = settings.dicom_max_pdu
    ae.maximum_associations = settings.dicom_max_associations
    ae.require_called_aet = settings.dicom_require_called_ae
    # The ARTIM timer: a connection holds a slot from its accept, so one that sends nothing is let go soon.
    ae.acse_timeout = settings.dicom_request_timeout_s
    ae.dimse_timeout = settings.dicom_timeout_s
    ae.network_timeout = settings.dicom_timeout_s
    return ae


class DicomReceiver:
    """Owns the AE, its association server and the calling-AE refresher."""

    def __init__(
        self,
        acceptance: Acceptance,
        load_ae_titles: Callable[[], Mapping[str, CallingOrg]],
        settings: IngestSettings,
    ) -> None:
        self._settings = settings
        # A group commit waits for C-STORE data sets still arriving too (received_files.py).
        acceptance.commits.also_wait_for(receive_to_files(settings.blob_dir, settings.max_instance_bytes).receiving)
        self._ae = build_ae(settings)
        self.calling_aets = CallingAeTitles(load_ae_titles, self._set_required, settings.calling_ae_refresh_s)
        self._handler = StoreHandler(acceptance, self.calling_aets)
        self._server: ThreadedAssociationServer | None = None
        self._missing = MissingDataSets(
            self._associations, self._handler.missing_data_set, settings.dicom_data_set_wait_s
        )
        self.port = 0

    def _associations(self) -> list[Association]:
        server = self._server
        return list(server.active_associations) if server is not None else []

    def _set_required(self, titles: list[str]) -> None:
        self._ae.require_calling_aet = titles

    def start(self) -> int:
        """Load the calling AE titles, then listen; returns the bound port."""
        self.calling_aets.start()
        # `AE.start_server(block=False)`, with a request handler whose associations wait for work
        # instead of polling for it (services/common/dicom/association_waits.py) and answer without
        # pydicom's writer (services/ingest/dimse_encoding.py).
        server = self._ae.make_server(
            (self._settings.dicom_host, self._settings.dicom_port),
            evt_handlers=[(evt.EVT_C_STORE, self._handler), (evt.EVT_REJECTED, _on_rejected)],
            server_class=ThreadedAssociationServer,
            request_handler=IngestRequestHandler,
        )
        self._ae._servers.append(server)  # as start_server does: server.shutdown() removes it there
        threading.Thread(target=server.serve_forever, name="imx-dicom-acceptor", daemon=True).start()
        self._server = server
        self.port = int(server.server_address[1])
        self._missing.start()
        return self.port

    def stop(self, grace_s: float) -> None:
        """Stop accepting associations, give open ones `grace_s` to finish, then abort the rest.

        An SCP cannot ask a peer to release (PS3.8 7.2: only the requestor releases), so waiting is
        all it can do; an aborted transfer was never acknowledged, and the peer sends it again.
        """
        self.calling_aets.stop()
        self._missing.stop()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        open_associations = server.active_associations
        deadline = time.monotonic() + grace_s
        while open_associations and time.monotonic() < deadline:
            time.sleep(0.1)
            open_associations = [a for a in open_associations if a.is_alive()]
        for assoc in open_associations:
            log.warning("association aborted at shutdown", extra={"calling_ae": assoc.requestor.ae_title.strip()})
            assoc.abort()
        for assoc in open_associations:
            assoc.join(timeout=5)

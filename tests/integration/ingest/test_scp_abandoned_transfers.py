"""C-STORE transfers a sender abandons midway (A-ABORT, or the connection dropped) leave nothing open
and nothing behind in the running service: issue 9, bounded resources for any input."""

from __future__ import annotations

import os
import socket
import time
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from services.common.blob_store import LocalBlobStore, sha256_hex
from services.common.dicom.header import inspect_instance
from tests.integration.ingest.conftest import SenderOrg
from tests.integration.ingest.helpers import RunningIngest, ingested_events
from tests.unit.ingest.samples import mr_study

ABANDONED = 50
FRAGMENT = 4096  # P-DATA-TF PDU size the sender writes: a 128 KiB MR data set is many of them
SENT = 5  # PDUs sent before abandoning: the command set and the data set's first fragments


def _pdus(instance: bytes, context_id: int) -> list[bytes]:
    """A C-STORE-RQ for `instance` as the P-DATA-TF PDUs a sender writes (command, then data set)."""
    ds = dcmread(BytesIO(instance))
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = []
    for primitive in message.encode_msg(context_id, FRAGMENT):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    return pdus


def _abandon(ingest: RunningIngest, calling_ae: str, pdus: list[bytes], drop: bool) -> None:
    """Associate, send the first PDUs of a C-STORE, then abort (`drop`: just close the connection)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", ingest.endpoints.dicom_port, ae_title=ingest.endpoints.ae_title)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    assert raw is not None
    for pdu in pdus[:SENT]:
        raw.sendall(pdu)
    time.sleep(0.01)  # let the receiver start the file: the transfer is abandoned midway, not before
    if drop:
        raw.shutdown(socket.SHUT_RDWR)
        assoc.kill()
    else:
        assoc.abort()


def _open_received_files(folder: Path) -> list[str]:
    """This process's descriptors open on C-STORE files in the receive folder (the service runs here)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor, or another thread's)
            continue
        if target.startswith(f"{folder}/.tmp-c-store-"):
            found.append(target)
    return found


def _partial_files(folder: Path) -> list[Path]:
    return list(folder.glob(".tmp-c-store-*"))


def _settled(folder: Path, wait_s: float = 10.0) -> tuple[int, int]:
    """Open descriptors and files left once the receiver has seen the associations end (no garbage
    collection asked for: they are let go when the association ends, not when it is collected)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = len(_open_received_files(folder)), len(_partial_files(folder))
        if left == (0, 0) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_transfers_abandoned_midway_leave_no_descriptor_open_and_no_partial_file(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str
) -> None:
    folder = Path(ingest.settings.blob_dir)
    before = len(_open_received_files(folder)), len(_partial_files(folder))
    (instance,) = mr_study(301, n=1)
    pdus = _pdus(instance, context_id=1)
    assert len(pdus) > SENT + 1, "the data set must still be arriving when the sender gives up"

    for i in range(ABANDONED):
        _abandon(ingest, sender.ae_title, pdus, drop=bool(i % 2))

    assert _settled(folder) == before == (0, 0)

    # A data set that does complete is still stored, and its file (moved into the store) kept.
    ae = AE(ae_title=sender.ae_title)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", ingest.endpoints.dicom_port, ae_title=ingest.endpoints.ae_title)
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(dcmread(BytesIO(instance))).Status) == 0x0000
    finally:
        assoc.release()
    assert _settled(folder) == (0, 0)
    uid = inspect_instance(instance, 10**9).sop_instance_uid
    (event,) = [e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid == uid]
    assert sha256_hex(LocalBlobStore(folder).get(event.blob.sha256)) == event.blob.sha256

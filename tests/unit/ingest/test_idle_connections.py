"""Every open connection holds one of IMX_DICOM_MAX_ASSOCIATIONS (pynetdicom counts it from the accept).
A peer that sends nothing, or stops part way through a PDU, is let go: before, a stalled read blocked its
thread for ever (accepted sockets had no timeout) and an idle one held its slot for the whole ACSE
timeout, so a few such connections locked every sender out."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.transport import ThreadedAssociationServer

from services.ingest.scp import status_dataset
from services.ingest.settings import IngestSettings
from tests.unit.ingest.scp_servers import serve_stores

SLOTS = 2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedAssociationServer]:
    def store(_event: Event) -> Dataset:
        return status_dataset(0x0000)

    settings = IngestSettings(
        dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=1.0, dicom_request_timeout_s=1.0, dicom_max_associations=SLOTS
    )
    served, _port = serve_stores(settings, store)
    yield served
    served.shutdown()


def _sender_gets_in(server: ThreadedAssociationServer) -> bool:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="IMX")
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


def _slots_taken(server: ThreadedAssociationServer, first_bytes: bytes) -> list[socket.socket]:
    peers = [socket.create_connection(server.server_address[:2]) for _ in range(SLOTS)]
    for peer in peers:
        if first_bytes:
            peer.sendall(first_bytes)
    deadline = time.monotonic() + 5
    while len(server.active_associations) < SLOTS:
        assert time.monotonic() < deadline, "the connections were not accepted"
        time.sleep(0.01)
    assert not _sender_gets_in(server), "the slots are taken while the peers hold them"
    return peers


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"\x01", b"\x01\x00\x00\x00\x01\x00"],
    ids=["nothing", "one-byte", "part-of-a-header"],
)
def test_connections_that_stall_give_their_slots_back(server: ThreadedAssociationServer, first_bytes: bytes) -> None:
    peers = _slots_taken(server, first_bytes)
    try:
        deadline = time.monotonic() + 10
        while not _sender_gets_in(server):
            assert time.monotonic() < deadline, "a stalled peer kept its slot"
            time.sleep(0.2)
    finally:
        for peer in peers:
            peer.close()

"""Associations of ingest's SCP wait for work instead of polling, and still answer at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.ingest.reactor_waits import IDLE_WAIT_S, RECV_PIECE, WaitingRequestHandler, read_in_large_pieces
from services.ingest.scp import build_ae, status_dataset
from services.ingest.settings import IngestSettings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedAssociationServer]:
    def store(event: Event) -> Dataset:
        assert len(event.encoded_dataset()) > 1000  # the whole data set arrived
        return status_dataset(0x0000)

    ae = build_ae(IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=10))
    server = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[(evt.EVT_C_STORE, store)],
        server_class=ThreadedAssociationServer,
        request_handler=WaitingRequestHandler,
    )
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _associate(server: ThreadedAssociationServer) -> Any:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="IMX")
    assert assoc.is_established
    return assoc


def _ct(size: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x01\x02" * (size // 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


def _acceptor(server: ThreadedAssociationServer) -> Any:
    deadline = time.monotonic() + 5
    while not server.active_associations:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return server.active_associations[0]


def test_an_idle_association_waits_instead_of_polling(server: ThreadedAssociationServer) -> None:
    assoc = _associate(server)
    acceptor = _acceptor(server)
    passes = {"dul": 0, "reactor": 0}
    transport_event, get_msg = acceptor.dul._is_transport_event, acceptor.dimse.get_msg

    def counted_transport_event() -> bool:
        passes["dul"] += 1
        return bool(transport_event())

    def counted_get_msg(block: bool = False) -> Any:
        passes["reactor"] += 1
        return get_msg(block)

    acceptor.dul._is_transport_event = counted_transport_event
    acceptor.dimse.get_msg = counted_get_msg
    try:
        time.sleep(0.5)
        # pynetdicom's own loops pass ~500 times in 0.5 s each (1 ms sleeps); waiting, each wakes
        # once per IDLE_WAIT_S.
        limit = 0.5 / IDLE_WAIT_S * 2 + 5
        assert passes["dul"] <= limit and passes["reactor"] <= limit, passes
        started = time.monotonic()
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert time.monotonic() - started < IDLE_WAIT_S / 2  # woken by the request, not a timeout
    finally:
        assoc.release()


def test_c_stores_are_answered_and_the_release_is_prompt(server: ThreadedAssociationServer) -> None:
    assoc = _associate(server)
    statuses = []
    for size in (10_000, 600_000, 3_000_000):  # the largest spans several 1 MiB PDUs
        statuses.append(int(assoc.send_c_store(_ct(size)).Status))
    started = time.monotonic()
    assoc.release()
    assert statuses == [0x0000, 0x0000, 0x0000]
    assert assoc.is_released and time.monotonic() - started < 1.0
    deadline = time.monotonic() + 2
    while server.active_associations:
        assert time.monotonic() < deadline, "the acceptor's threads did not end"
        time.sleep(0.01)


def test_a_peer_that_aborts_ends_the_association(server: ThreadedAssociationServer) -> None:
    assoc = _associate(server)
    acceptor = _acceptor(server)
    assoc.abort()
    acceptor.join(timeout=2)
    assert not acceptor.is_alive() and not acceptor.dul.is_alive()


class _Sock:
    """The one attribute of AssociationSocket that `recv` uses."""

    def __init__(self, raw: socket.socket) -> None:
        self.socket = raw


def test_reading_returns_exactly_what_was_asked_for_in_few_calls() -> None:
    ours, peer = socket.socketpair()
    calls = 0
    recv = ours.recv

    class Counting:
        def recv(self, n: int) -> bytes:
            nonlocal calls
            calls += 1
            return recv(n)

    sock: Any = _Sock(Counting())  # type: ignore[arg-type]
    read_in_large_pieces(sock)
    payload = bytes(range(256)) * 4096  # 1 MiB
    sender = threading.Thread(target=peer.sendall, args=(payload + b"next",))
    sender.start()
    try:
        assert sock.recv(len(payload)) == payload
        assert sock.recv(4) == b"next"
        assert calls < len(payload) // 4096  # pynetdicom's 4 KiB pieces: 256 calls
    finally:
        sender.join()
        ours.close()
        peer.close()


def test_reading_returns_what_came_before_the_peer_closed() -> None:
    ours, peer = socket.socketpair()
    sock: Any = _Sock(ours)
    read_in_large_pieces(sock)
    peer.sendall(b"partial")
    peer.close()
    try:
        assert sock.recv(RECV_PIECE * 3) == bytearray(b"partial")
    finally:
        ours.close()

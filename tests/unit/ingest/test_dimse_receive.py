"""What ingest's SCP receives itself (services/ingest/dimse_receive.py): P-DATA-TF PDUs read into one
buffer and written to the data set's file from there give the same file, byte for byte, as pynetdicom's
own receive path, and a malformed PDU ends the association as pynetdicom ends it."""

from __future__ import annotations

import hashlib
import queue
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, dimse_messages
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from services.ingest import dimse_receive
from services.ingest.dimse_receive import (
    Malformed,
    PduReader,
    ReceivedPData,
    presentation_data_values,
    read_pdu_data,
)
from services.ingest.received_files import ReceivedFiles
from services.ingest.scp import status_dataset
from services.ingest.settings import IngestSettings
from tests.unit.ingest.scp_servers import receive_to_files_for_this_test, serve_stores
from tests.unit.ingest.store_commands import store_command


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def test_presentation_data_values_are_views_of_the_received_body() -> None:
    body = bytearray(_pdv(1, 0x03, b"command") + _pdv(3, 0x00, b"data" * 100))
    values = presentation_data_values(body)
    assert [(cid, bytes(value)) for cid, value in values] == [(1, b"\x03command"), (3, b"\x00" + b"data" * 100)]
    assert all(isinstance(value, memoryview) and value.obj is body for _, value in values)
    primitive = ReceivedPData(values).to_primitive()
    assert primitive.presentation_data_value_list == values


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">LB", 0, 1),  # an item length of 0: not even a context id
        _pdv(1, 0x02, b"data")[:-1],  # shorter than its length says
        _pdv(1, 0x02, b"data") + b"\x00\x00",  # a fragment of a next item header
    ],
)
def test_a_malformed_body_is_refused(body: bytes) -> None:
    with pytest.raises(Malformed):
        presentation_data_values(bytearray(body))


def _dul_reading(data: bytes) -> Any:
    """A stand-in DUL whose peer sent `data` and closed."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()

    def recv(n: int) -> bytearray:
        stream = bytearray()
        while len(stream) < n:
            piece = ours.recv(n - len(stream))
            if not piece:
                break
            stream += piece
        return stream

    return SimpleNamespace(
        socket=SimpleNamespace(recv=recv, socket=ours),
        event_queue=queue.Queue(),
        _recv_pdu=queue.Queue(),
        _decode_pdu=lambda b: pytest.fail("only P-DATA-TF here"),
    )


@pytest.mark.parametrize(
    ("pdu", "event"),
    [
        (struct.pack(">BBL", 4, 0, 8) + _pdv(1, 0x02, b"da"), "Evt10"),
        (struct.pack(">BBL", 4, 0, 8) + struct.pack(">LBB", 9, 1, 2) + b"da", "Evt19"),  # item past the PDU
        (struct.pack(">BBL", 4, 0, 100) + _pdv(1, 0x02, b"da"), "Evt17"),  # closed before the PDU's end
        (struct.pack(">BBL", 9, 0, 0), "Evt19"),  # no such PDU type
        (b"\x04\x00", "Evt17"),
    ],
)
def test_each_pdu_queues_pynetdicoms_event(pdu: bytes, event: str) -> None:
    dul = _dul_reading(pdu)
    read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == event
    assert dul._recv_pdu.qsize() == (1 if event == "Evt10" else 0)


@pytest.mark.parametrize(
    ("pdu_type", "claimed"),
    [(1, 200 * 1024 * 1024), (4, 200 * 1024 * 1024), (4, 2 * 1024 * 1024 + 1), (7, 2 * 1024 * 1024)],
)
def test_a_pdu_longer_than_this_acceptor_takes_is_refused_unread(pdu_type: int, claimed: int) -> None:
    """A PDU's length is the peer's to claim: a 200 MiB A-ASSOCIATE-RQ, from a caller whose AE title
    was not checked yet, was received whole into memory (twice). With 1 MiB PDUs negotiated a P-DATA-TF
    may be up to 2 MiB (slack for senders that overshoot); any other PDU up to 1 MiB."""
    dul = _dul_reading(struct.pack(">BBL", pdu_type, 0, claimed) + b"\0" * 1000)
    reads: list[int] = []
    recv = dul.socket.recv
    dul.socket.recv = lambda n: reads.append(n) or recv(n)
    PduReader(dul, max_data_pdu=1024 * 1024).read()
    assert dul.event_queue.get_nowait() == "Evt19"  # pynetdicom's invalid PDU: A-ABORT, connection closed
    assert reads == [6]  # the header only
    assert dul._recv_pdu.qsize() == 0


def test_a_pdu_within_the_limit_is_read() -> None:
    dul = _dul_reading(struct.pack(">BBL", 4, 0, 8) + _pdv(1, 0x02, b"da"))
    PduReader(dul, max_data_pdu=8).read()
    assert dul.event_queue.get_nowait() == "Evt10"


def test_the_next_pdus_header_comes_with_the_body_before_it() -> None:
    """Two P-DATA-TF PDUs sent back to back: the second's header is received with the first's body,
    so the second needs no receive for its header (and the reactor no select to find it)."""
    first = struct.pack(">BBL", 4, 0, 8) + _pdv(1, 0x00, b"da")
    second = struct.pack(">BBL", 4, 0, 9) + _pdv(1, 0x02, b"dat")
    dul = _dul_reading(first + second)
    header_receives: list[int] = []
    recv = dul.socket.recv
    dul.socket.recv = lambda n: header_receives.append(n) or recv(n)
    dul.socket._is_connected = True
    reader = PduReader(dul)
    reader.read()
    assert reader.has_pending()
    reader.read()
    assert header_receives == [6]
    assert not reader.has_pending()
    assert [dul.event_queue.get_nowait() for _ in range(2)] == ["Evt10", "Evt10"]
    values = [dul._recv_pdu.get_nowait()._values for _ in range(2)]
    assert [[bytes(v) for _, v in pdu] for pdu in values] == [[b"\x00da"], [b"\x02dat"]]


def test_a_header_read_ahead_in_part_completes_from_the_socket_or_ends_as_pynetdicom() -> None:
    first = struct.pack(">BBL", 4, 0, 8) + _pdv(1, 0x00, b"da")
    dul = _dul_reading(first + struct.pack(">BBL", 4, 0, 9)[:3])  # then closed mid-header
    dul.socket._is_connected = True
    reader = PduReader(dul)
    reader.read()
    assert reader.pending == b"\x04\x00\x00"
    reader.read()
    assert [dul.event_queue.get_nowait() for _ in range(2)] == ["Evt10", "Evt17"]


def test_bytes_read_ahead_are_dropped_with_the_connection() -> None:
    first = struct.pack(">BBL", 4, 0, 8) + _pdv(1, 0x00, b"da")
    dul = _dul_reading(first + struct.pack(">BBL", 4, 0, 9))
    dul.socket._is_connected = True
    reader = PduReader(dul)
    reader.read()
    dul.socket._is_connected = False
    assert not reader.has_pending()


# ---- over a real association on localhost


class _Received:
    def __init__(self) -> None:
        self.files: list[bytes] = []
        self.hashes: list[str | None] = []
        self.port = 0

    def store(self, event: Event) -> Dataset:
        self.files.append(Path(event.dataset_path).read_bytes())
        self.hashes.append(dimse_receive.received_sha256(event.request))
        return status_dataset(0x0000)


@contextmanager
def _serve(tmp_path: Path, max_pdu: int) -> Iterator[_Received]:
    received = _Received()
    settings = IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=10, dicom_max_pdu=max_pdu)
    server, received.port = serve_stores(settings, received.store)
    try:
        yield received
    finally:
        server.shutdown()


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receive_to_files_for_this_test(tmp_path / "received", monkeypatch)


def _instances() -> list[tuple[Dataset, str]]:
    sizes = [0, 1, 5000, 70_000]  # pixel bytes: in one PDU, and over many of 4 KiB
    out = []
    for n, syntax in zip(sizes, [ExplicitVRLittleEndian, ImplicitVRLittleEndian] * 2, strict=True):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        # The last UID is not valid (PS3.5 9.1): its meta group is written by pydicom on both paths.
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{n}" if n < 70_000 else "1.2.826.0.1.3680043.10.01"
        ds.PatientName = "Synthetic^Test"
        ds.BitsAllocated = 8
        ds.PixelRepresentation = 0
        if n:
            ds.PixelData = bytes(range(256)) * (n // 256) + b"\x07" * (n % 256 + n % 2)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.set_original_encoding(syntax == ImplicitVRLittleEndian, True)
        out.append((ds, syntax))
    return out


def _send(port: int, max_pdu: int) -> None:
    sender = AE(ae_title="SENDER")
    sender.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    sender.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    assoc = sender.associate("127.0.0.1", port, ae_title="IMX", max_pdu=max_pdu)
    assert assoc.is_established
    try:
        for ds, _ in _instances():
            assert int(assoc.send_c_store(ds).Status) == 0
    finally:
        assoc.release()


@pytest.mark.usefixtures("chunked")
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_files_are_byte_for_byte_pynetdicoms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    decode_msg = dimse_receive.decode_msg

    def counted(*args: Any) -> bool:
        calls.append(args[0])
        return decode_msg(*args)

    monkeypatch.setattr(dimse_receive, "decode_msg", counted)
    files, hashes = {}, {}
    for way in ("direct", "pynetdicom"):
        if way == "pynetdicom":
            monkeypatch.setattr(dimse_receive, "receive_directly", lambda assoc: None)
        with _serve(tmp_path / way, max_pdu=4096) as served:
            _send(served.port, max_pdu=4096)
            files[way], hashes[way] = served.files, served.hashes
        if way == "direct":
            assert calls, "the direct path was not taken"
            calls.clear()
    assert calls == []
    assert len(files["direct"]) == len(_instances())
    assert files["direct"] == files["pynetdicom"]
    for data in files["direct"]:
        assert data[:132] == bytes(128) + b"DICM"
    # Hashed as written, each file's SHA-256 is known without reading it again (and only then).
    assert hashes["direct"] == [hashlib.sha256(data).hexdigest() for data in files["direct"]]
    assert hashes["pynetdicom"] == [None] * len(files["pynetdicom"])


@pytest.mark.usefixtures("chunked")
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_data_set_is_no_longer_arriving_once_its_last_fragment_is_written(tmp_path: Path) -> None:
    files = dimse_messages.NamedTemporaryFile
    assert isinstance(files, ReceivedFiles)
    arriving: list[int] = []
    received = _Received()

    def store(event: Event) -> Dataset:
        arriving.append(files.receiving())  # its own data set complete: nothing arriving (one sender)
        return received.store(event)

    settings = IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=10, dicom_max_pdu=4096)
    server, port = serve_stores(settings, store)
    try:
        _send(port, max_pdu=4096)
    finally:
        server.shutdown()
    assert len(received.files) == len(_instances())
    assert arriving == [0] * len(_instances())
    assert files.receiving() == 0


def test_a_store_requests_command_set_is_pydicoms_when_asked_for_and_not_decoded_before() -> None:
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dsutils import decode

    primitive = store_command(0x0101)  # no data set: complete with the command
    encoded = bytes(primitive.presentation_data_value_list[0][1][1:])
    message = dimse_receive.new_message()
    assert message.decode_msg(primitive)
    assert isinstance(message, C_STORE_RQ)
    assert "command_set" not in vars(message)  # left undecoded by the store itself
    assert message.command_set == decode(BytesIO(encoded), True, True)
    assert message.command_set is message.command_set  # decoded once

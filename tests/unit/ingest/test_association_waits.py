"""Associations of ingest's SCP wait for work instead of polling (services/common/dicom/association_waits.py,
through WaitingRequestHandler), and still answer at once, in both of pynetdicom's receive modes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import _config, dimse_messages
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from services.common.dicom import association_waits
from services.common.dicom.association_waits import IDLE_WAIT_S, WaitingRequestHandler
from services.ingest.scp import receive_to_files, status_dataset
from services.ingest.settings import IngestSettings
from tests.unit.ingest.scp_servers import associate, serve_stores, small_ct


@pytest.fixture(params=["in-memory", "to-files"])
def receive_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Where pynetdicom keeps a received data set, pinned for the test and restored after it.

    It is a process-wide switch that ingest's DicomReceiver turns on (`receive_to_files`) and nothing
    turns off, so without this a test's outcome depended on which tests ran before it in the process:
    `make test` runs tests/integration first, and a handler reading the in-memory data set then saw
    only the preamble and file meta (354 bytes of a 10 kB data set).
    """
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    if request.param == "to-files":
        receive_to_files(tmp_path / "received")
    return str(request.param)


def _data_set_received(event: Event) -> bytes:
    """The data set as the handler is given it, from wherever pynetdicom kept it (like StoreHandler)."""
    path = event.dataset_path
    if path is None:
        return event.encoded_dataset(include_meta=False)
    part10 = Path(path).read_bytes()
    # PS3.10 7.1: preamble, "DICM", then the File Meta Information Group Length (0002,0000) UL, whose
    # value is the length of the rest of the group.
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


@dataclass
class _Server:
    server: ThreadedAssociationServer
    received: list[bytes] = field(default_factory=list)


@pytest.fixture
def served(tmp_path: Path, receive_mode: str) -> Iterator[_Server]:
    received: list[bytes] = []

    def store(event: Event) -> Dataset:
        received.append(_data_set_received(event))
        return status_dataset(0x0000)

    settings = IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=10)
    server, _port = serve_stores(settings, store, WaitingRequestHandler)
    yield _Server(server, received)
    server.shutdown()


@pytest.fixture
def server(served: _Server) -> ThreadedAssociationServer:
    return served.server


def _acceptor(server: ThreadedAssociationServer) -> Any:
    deadline = time.monotonic() + 5
    while not server.active_associations:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return server.active_associations[0]


def test_an_idle_association_waits_instead_of_polling(server: ThreadedAssociationServer) -> None:
    assoc = associate(server)
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
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_a_request_wakes_an_idle_association(
    server: ThreadedAssociationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waits far longer than the answer may take, so that only a wake-up by the request answers in
    # time, however loaded the machine (timing against the 50 ms wait failed under load: 26-85 ms).
    wait_s = 3.0
    monkeypatch.setattr(association_waits, "IDLE_WAIT_S", wait_s)
    assoc = associate(server)  # both threads now wait up to wait_s at a time
    try:
        time.sleep(0.2)
        started = time.monotonic()
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert time.monotonic() - started < wait_s / 3
    finally:
        assoc.abort()


def test_a_peers_release_wakes_an_idle_association(
    server: ThreadedAssociationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The primitive the DUL hands up wakes the reactor; waiting on the DIMSE queue alone (ingest's
    # earlier variant) saw it only when the wait ended.
    wait_s = 3.0
    monkeypatch.setattr(association_waits, "IDLE_WAIT_S", wait_s)
    assoc = associate(server)
    acceptor = _acceptor(server)
    time.sleep(0.2)
    started = time.monotonic()
    assoc.release()
    assert assoc.is_released and time.monotonic() - started < wait_s / 3
    acceptor.join(timeout=wait_s / 3)
    assert not acceptor.is_alive() and not acceptor.dul.is_alive()


def test_c_stores_are_answered_and_the_release_is_prompt(served: _Server) -> None:
    server = served.server
    assoc = associate(server)
    statuses, sent = [], []
    for size in (10_000, 600_000, 3_000_000):  # the largest spans several 1 MiB PDUs
        ds = small_ct(size)
        sent.append(encode(ds, False, True))
        statuses.append(int(assoc.send_c_store(ds).Status))
    started = time.monotonic()
    assoc.release()
    assert statuses == [0x0000, 0x0000, 0x0000]
    assert [len(ds) for ds in served.received] == [len(ds) for ds in sent]
    assert served.received == sent  # each handler call was given the whole data set, byte for byte
    assert assoc.is_released and time.monotonic() - started < 1.0
    deadline = time.monotonic() + 2
    while server.active_associations:
        assert time.monotonic() < deadline, "the acceptor's threads did not end"
        time.sleep(0.01)


def test_a_peer_that_aborts_ends_the_association(server: ThreadedAssociationServer) -> None:
    assoc = associate(server)
    acceptor = _acceptor(server)
    assoc.abort()
    acceptor.join(timeout=2)
    assert not acceptor.is_alive() and not acceptor.dul.is_alive()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_ended_associations_hold_no_descriptors(server: ThreadedAssociationServer) -> None:
    def released_one() -> None:
        assoc = associate(server)
        acceptor = _acceptor(server)
        assoc.release()
        acceptor.join(timeout=2)
        assert not acceptor.is_alive() and not acceptor.dul.is_alive()

    released_one()  # whatever is opened once per process (pynetdicom's, logging's) is open now
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        released_one()
    deadline = time.monotonic() + 2  # the server's threads close the peers' sockets after the release
    while len(os.listdir("/proc/self/fd")) > before:
        assert time.monotonic() < deadline, "each wake-up pair is closed with its DUL"
        time.sleep(0.01)

"""C-STORE requests are served in the thread that received them (services/ingest/dimse_serve.py); C-ECHO,
release and abort stay pynetdicom's, and the peer sees the same answers in the same order."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.ingest import dimse_encoding
from services.ingest.dimse_serve import Turns
from services.ingest.scp import REACTOR_WAIT_S, status_dataset
from services.ingest.settings import IngestSettings
from tests.unit.ingest.scp_servers import associate, receive_to_files_for_this_test, serve_stores, small_ct


@dataclass
class _Served:
    server: ThreadedAssociationServer
    threads: list[str] = field(default_factory=list)  # "dul" or "association", per handler call
    received: list[bytes] = field(default_factory=list)
    answer: list[Any] = field(default_factory=list)  # what the next handler calls return or raise


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Served]:
    receive_to_files_for_this_test(tmp_path / "received", monkeypatch)
    threads: list[str] = []
    received: list[bytes] = []
    answer: list[Any] = []

    def store(event: Event) -> Dataset:
        threads.append("dul" if threading.current_thread() is event.assoc.dul else "association")
        part10 = Path(event.dataset_path).read_bytes()
        group_length = int.from_bytes(part10[140:144], "little")  # PS3.10 7.1
        received.append(part10[144 + group_length :])
        outcome = answer.pop(0) if answer else status_dataset(0x0000)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    settings = IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=10)
    server, _port = serve_stores(settings, store)
    yield _Served(server, threads, received, answer)
    server.shutdown()


def _ended(server: ThreadedAssociationServer) -> None:
    deadline = time.monotonic() + 3
    while server.active_associations:
        assert time.monotonic() < deadline, "the acceptor's threads did not end"
        time.sleep(0.01)


def test_stores_echoes_and_a_release_on_one_association(served: _Served) -> None:
    assoc = associate(served.server)
    sent, statuses = [], []
    for size in (10_000, 0, 3_000_000, 0, 600_000):  # 0: a C-ECHO between the stores
        if not size:
            statuses.append(int(assoc.send_c_echo().Status))
            continue
        ds = small_ct(size)
        sent.append(encode(ds, False, True))
        statuses.append(int(assoc.send_c_store(ds).Status))
    assoc.release()
    assert statuses == [0x0000] * 5
    assert served.received == sent  # each handler call was given its whole data set, byte for byte
    assert served.threads == ["dul"] * 3, "stores are served where they were received"
    assert assoc.is_released
    _ended(served.server)


def test_a_handlers_status_and_failure_are_answered(served: _Served) -> None:
    served.answer.extend([status_dataset(0xA700, "try-again-later"), RuntimeError("bug"), status_dataset(0x0000)])
    assoc = associate(served.server)
    statuses = [int(assoc.send_c_store(small_ct(1000)).Status) for _ in range(3)]
    assoc.release()
    # 0xC211: pynetdicom's own answer when the EVT_C_STORE handler raises, kept where the store is served
    assert statuses == [0xA700, 0xC211, 0x0000]


def _partial_store(assoc: Any, ds: Dataset) -> None:
    """A C-STORE-RQ's command set and the first part of its data set, never the rest."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.DataSet = BytesIO(cast(bytes, encode(ds, False, True)))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[1].context_id
    pdatas = list(message.encode_msg(context_id, 16_384))
    assert len(pdatas) > 2
    for pdata in pdatas[:2]:  # the command, one data fragment
        assoc.dul.send_pdu(pdata)


def test_an_abort_mid_data_set_ends_the_association_unanswered(served: _Served) -> None:
    assoc = associate(served.server)
    _partial_store(assoc, small_ct(200_000))
    time.sleep(0.2)
    assoc.abort()
    _ended(served.server)
    assert served.threads == [], "a data set that never completed reaches no handler"
    assoc = associate(served.server)  # the SCP serves the next association as before
    assert int(assoc.send_c_store(small_ct(1000)).Status) == 0x0000
    assoc.release()


def test_a_store_on_an_echo_context_is_not_served_as_a_store(served: _Served) -> None:
    """A request on a context whose abstract syntax is not storage goes to pynetdicom, as before."""
    assoc = associate(served.server)
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = generate_uid()
    request.DataSet = BytesIO(cast(bytes, encode(small_ct(100), False, True)))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    echo_context = assoc.accepted_contexts[0]
    assert echo_context.abstract_syntax == Verification
    # As pynetdicom's send_* methods do: the sender's own reactor must not take the response first.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        for pdata in message.encode_msg(echo_context.context_id, 16_384):
            assoc.dul.send_pdu(pdata)
        # pynetdicom's association thread serves it with the Storage service class (its SOP class says so)
        rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp[1] is not None and int(rsp[1].Status) == 0x0000
    assert served.threads == ["association"]
    assoc.release()


def test_a_store_pynetdicom_will_not_serve_leaves_no_data_set_file_behind(served: _Served, tmp_path: Path) -> None:
    """A C-STORE of a SOP class pynetdicom has no Storage service for is aborted by pynetdicom; its whole
    data set's file stayed in the blob folder (up to the instance limit each time) until the store's
    hourly sweep, and a sender could repeat it as fast as it could associate."""
    for _ in range(3):
        assoc = associate(served.server)
        ds = small_ct(100_000)
        request = C_STORE()
        request.MessageID, request.Priority = 1, 2
        request.AffectedSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"  # not a SOP class pynetdicom serves
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.DataSet = BytesIO(cast(bytes, encode(ds, False, True)))
        assoc.dimse.send_msg(request, assoc.accepted_contexts[1].context_id)
        deadline = time.monotonic() + 5
        while assoc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert assoc.is_aborted
    _ended(served.server)
    assert served.threads == []
    assert not [p.name for p in (tmp_path / "received").iterdir()]


def test_the_reactors_queued_message_goes_first() -> None:
    class _Assoc:
        class dimse:  # stands in for the association's DIMSE provider
            msg_queue: queue.Queue[Any] = queue.Queue()

    turns = Turns(_Assoc())  # type: ignore[arg-type]
    assert turns.claim()
    turns.serving = False
    _Assoc.dimse.msg_queue.put((1, "echo"))
    assert not turns.claim(), "a message waits in the association thread's queue"
    assert turns.take(_Assoc.dimse.msg_queue.get, False, None) == (1, "echo")
    assert not turns.claim(), "the association thread is serving it"
    turns.done()
    assert turns.claim()


def test_a_response_is_the_pdu_pynetdicom_sends() -> None:
    command = dimse_encoding.c_store_response(5, CTImageStorage, "1.2.3", 0x0000, None)
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((3, dimse_encoding.LAST_COMMAND_FRAGMENT + command))
    assert dimse_encoding.p_data_tf(3, command) == P_DATA_TF(primitive).encode()


def test_an_idle_association_still_meets_its_network_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its association thread, which serves no store, wakes unsignalled only every REACTOR_WAIT_S."""
    receive_to_files_for_this_test(tmp_path / "received", monkeypatch)
    settings = IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=1)
    server, _port = serve_stores(settings, lambda event: status_dataset(0x0000))
    try:
        assoc = associate(server)
        assert int(assoc.send_c_store(small_ct(1000)).Status) == 0x0000
        started = time.monotonic()
        while server.active_associations:
            assert time.monotonic() - started < 1 + REACTOR_WAIT_S + 2, "the network timeout was not met"
            time.sleep(0.05)
        assert time.monotonic() - started >= 0.9
    finally:
        server.shutdown()

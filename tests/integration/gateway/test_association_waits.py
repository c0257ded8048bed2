"""The gateway's associations wait for work instead of polling every 1 ms (WaitingAE, from
services/common/dicom/association_waits.py), the sender reads plain C-STORE responses itself (its
SocketTurn), and they still answer, fail, time out, release and end as pynetdicom's do: against a real
pynetdicom SCP in this process and dcmtk's storescp, no mocks of the network."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT

from services.common.dicom.association_waits import socket_turn
from services.gateway.dimse_store import DimseStore
from services.gateway.fetched import Fetched
from services.gateway.targets import DicomTarget, StoreResult
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.peers import storescp
from tools.devstack import free_port

IDLE_S = 0.5


def part10(folder: Path, pixel_bytes: int) -> tuple[Path, str]:
    """A CT instance with `pixel_bytes` of pixel data, as a Part 10 file; its path and SOP Instance UID."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.PatientID = "WAITS"
    ds.add_new(0x7FE00010, "OB", bytes(range(256)) * (pixel_bytes // 256) + bytes(pixel_bytes % 256 % 2))
    path = folder / f"{uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, uid


class Scp:
    """A pynetdicom C-STORE SCP: records what it received, in order, and answers `statuses[uid]`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[str, int]] = []
        self.statuses: dict[str, int] = {}
        self.answers: dict[str, Callable[[Any], int | Dataset]] = {}  # instead of a status, for that uid
        ae = AE(ae_title="WAITSCP")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.maximum_pdu_size = 64 * 1024
        self._ae = ae
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append((uid, len(event.request.DataSet.getvalue())))
        if uid in self.answers:
            return self.answers[uid](event)
        return self.statuses.get(uid, 0x0000)

    def stop(self) -> None:
        self.server.shutdown()


@contextmanager
def scp() -> Iterator[Scp]:
    server = Scp()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def dimse_store(port: int, called_ae: str = "WAITSCP") -> Iterator[DimseStore]:
    store = DimseStore(DicomTarget(called_ae, "127.0.0.1", port), dimse_timeout_s=10)
    try:
        yield store
    finally:
        store.close()


def store(target: DimseStore, path: Path) -> StoreResult:
    return target.store(Fetched.in_file(path), events_pb2.PartnerDelivery())


def counted(obj: Any, name: str, counter: list[int]) -> None:
    original: Callable[..., Any] = getattr(obj, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, call)


def ended_within(assoc: Association, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    for thread in (assoc, assoc.dul):
        thread.join(max(0.0, deadline - time.monotonic()))
    return not assoc.is_alive() and not assoc.dul.is_alive()


def test_an_idle_association_waits_instead_of_polling(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 4096)
    with storescp(tmp_path) as pacs, dimse_store(pacs.port, "STORESCP") as target:
        assert store(target, path).ok
        assoc: Any = target._assoc
        dul_passes, reactor_passes = [0], [0]
        counted(assoc.dul, "_process_recv_primitive", dul_passes)  # once per DUL pass
        counted(assoc.dimse, "get_msg", reactor_passes)  # once per association reactor pass
        cpu_before = time.process_time()
        time.sleep(IDLE_S)
        cpu_ms = (time.process_time() - cpu_before) * 1000
        # pynetdicom's loops: ~IDLE_S / 1 ms = 500 passes each and ~60 ms of CPU in 0.5 s.
        assert dul_passes[0] <= 3 * IDLE_S / 0.05, "the DUL waits for the socket, its queue or its timers"
        assert reactor_passes[0] <= 3 * IDLE_S / 0.05, "the reactor waits for a message, a pause or a kill"
        assert cpu_ms < 25, f"an idle association used {cpu_ms:.1f} ms of CPU in {IDLE_S} s"
        assert store(target, path).ok, "and after idling it still stores"


def test_small_and_large_instances_are_answered_in_order_with_their_statuses(tmp_path: Path) -> None:
    sizes = [2_000, 6 * 1024 * 1024, 10_000, 3 * 1024 * 1024 + 7, 512, 300_000, 8 * 1024 * 1024]
    statuses = [0x0000, 0xB000, 0xA700, 0x0000, 0xC000, 0x0000, 0xB007]
    files = [part10(tmp_path, size) for size in sizes]
    with scp() as peer, dimse_store(peer.port) as target:
        for (_, uid), status in zip(files, statuses, strict=True):
            peer.statuses[uid] = status
        results = [store(target, path) for path, _ in files]
        associations = target.associations
    assert [r.status_detail for r in results] == [f"0x{s:04X}" for s in statuses]
    assert [r.ok for r in results] == [True, True, False, True, False, True, True]
    assert [r.retryable for r in results if not r.ok] == [True, False]
    assert [uid for uid, _ in peer.received] == [uid for _, uid in files], "received in the order sent"
    for (path, _), (_, length) in zip(files, peer.received, strict=True):
        assert length == path.stat().st_size - 132 - _meta_length(path), "each data set arrived whole"
    assert associations == 1


def _meta_length(path: Path) -> int:
    """The file meta group's length after its preamble and prefix (group length element included)."""
    raw = path.read_bytes()
    return 12 + int.from_bytes(raw[140:144], "little")


def test_release_ends_both_threads_promptly(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 4096)
    with scp() as peer:
        target = DimseStore(DicomTarget("WAITSCP", "127.0.0.1", peer.port), dimse_timeout_s=10)
        assert store(target, path).ok
        assoc: Any = target._assoc
        time.sleep(0.12)  # both loops settled into their waits
        started = time.monotonic()
        target.close()
        assert ended_within(assoc, 0.5), "both threads ended after the release"
        assert time.monotonic() - started < 0.5
        assert assoc.is_released


def test_a_peers_abort_ends_both_threads_promptly_and_the_next_store_associates_again(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 4096)
    with scp() as peer, dimse_store(peer.port) as target:
        assert store(target, path).ok
        assoc: Any = target._assoc
        time.sleep(0.12)
        peer.server.active_associations[0].abort()
        assert ended_within(assoc, 0.5), "both threads ended after the peer's abort"
        assert assoc.is_aborted
        assert store(target, path).ok
        assert target.associations == 2


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_associations_that_fail_hold_no_descriptors(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 512)
    closed_port = free_port()
    with dimse_store(closed_port) as target:
        assert not store(target, path).ok
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            assert store(target, path).status_detail == "connection-failed"
        time.sleep(0.1)
        assert len(os.listdir("/proc/self/fd")) <= before


def test_a_pause_request_is_seen_at_once_not_after_the_reactors_wait(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 4096)
    with scp() as peer, dimse_store(peer.port) as target:
        assert store(target, path).ok
        assoc: Any = target._assoc
        waits = []
        for _ in range(10):
            time.sleep(0.06)  # the reactor is in its wait
            started = time.monotonic()
            assoc._reactor_checkpoint.clear()
            while not assoc._is_paused:
                time.sleep(0.0001)
            waits.append(time.monotonic() - started)
            assoc._reactor_checkpoint.set()
        assert sorted(waits)[len(waits) // 2] < 0.02, f"median pause took {sorted(waits)[5] * 1000:.1f} ms"
        threading.Event().wait(0.01)
        assert store(target, path).ok


def test_the_sender_reads_plain_responses_and_pynetdicoms_threads_stay_asleep(tmp_path: Path) -> None:
    files = [part10(tmp_path, size) for size in (4096, 300_000, 2_000, 1024 * 1024)]
    with storescp(tmp_path) as pacs, dimse_store(pacs.port, "STORESCP") as target:
        assert store(target, files[0][0]).ok
        assoc: Any = target._assoc
        dul_reads, pauses = [0], [0]
        counted(assoc.dul, "_read_pdu_data", dul_reads)
        counted(assoc._reactor_checkpoint, "clear", pauses)
        results = [store(target, path) for _ in range(5) for path, _ in files]
        assert all(r.ok for r in results)
        assert (dul_reads[0], pauses[0]) == (0, 0), "dcmtk's responses (written in two pieces) read by the sender"
        assert target.associations == 1


def failure(comment: str) -> Callable[[Any], Dataset]:
    def answer(event: Any) -> Dataset:
        status = Dataset()
        status.Status = 0xC001
        status.ErrorComment = comment
        return status

    return answer


def test_a_failure_with_a_comment_is_read_by_pynetdicom_and_the_answers_stay_in_order(tmp_path: Path) -> None:
    files = [part10(tmp_path, 4096) for _ in range(4)]
    with scp() as peer, dimse_store(peer.port) as target:
        peer.answers[files[1][1]] = failure("cannot store this one")
        peer.statuses[files[2][1]] = 0xA700
        results = [store(target, path) for path, _ in files]
        assert target.associations == 1
    assert [r.status_detail for r in results] == ["0x0000", "0xC001", "0xA700", "0x0000"]
    assert [(r.ok, r.retryable) for r in results] == [(True, False), (False, False), (False, True), (True, False)]


def aborting(event: Any) -> int:
    event.assoc.abort()
    return 0x0000


def closing(event: Any) -> int:
    event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    return 0x0000


@pytest.mark.parametrize("ending", [aborting, closing], ids=["abort", "close"])
def test_a_peer_that_ends_the_association_mid_store_fails_that_instance_and_the_next_associates_again(
    tmp_path: Path, ending: Callable[[Any], int]
) -> None:
    files = [part10(tmp_path, 100_000) for _ in range(3)]
    with scp() as peer, dimse_store(peer.port) as target:
        peer.answers[files[1][1]] = ending
        started = time.monotonic()
        results = [store(target, path) for path, _ in files]
        assert time.monotonic() - started < 5, "not the DIMSE timeout"
    assert [r.status_detail for r in results] == ["0x0000", "aborted", "0x0000"]
    assert results[1].retryable
    assert target.associations == 2


def test_a_peer_that_does_not_answer_fails_the_store_after_the_dimse_timeout(tmp_path: Path) -> None:
    files = [part10(tmp_path, 4096) for _ in range(2)]

    def silent(event: Any) -> int:
        time.sleep(2.5)
        return 0x0000

    with scp() as peer:
        peer.answers[files[0][1]] = silent
        target = DimseStore(DicomTarget("WAITSCP", "127.0.0.1", peer.port), dimse_timeout_s=1)
        try:
            started = time.monotonic()
            first = store(target, files[0][0])
            waited = time.monotonic() - started
            second = store(target, files[1][0])
        finally:
            target.close()
    assert (first.status_detail, first.retryable) == ("dimse-timeout", True)
    assert 0.9 < waited < 2.4
    assert second.ok and target.associations == 2


def test_a_peers_abort_just_before_a_store_sends_it_on_a_new_association(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 4096)
    with scp() as peer, dimse_store(peer.port) as target:
        for _ in range(5):
            assert store(target, path).ok
            peer.server.active_associations[0].abort()
            time.sleep(0.005)  # arrived, and perhaps not yet read: the DUL may be waiting out the last turn
            result = store(target, path)
            assert result.ok, result
    assert target.associations == 6


def test_what_is_queued_for_the_dul_during_a_turn_is_written_after_it(tmp_path: Path) -> None:
    path, _ = part10(tmp_path, 4096)
    with scp() as peer, dimse_store(peer.port) as target:
        assert store(target, path).ok
        assoc: Any = target._assoc
        turn = socket_turn(assoc)
        assert turn is not None
        turn.take()
        abort = A_ABORT()
        abort.abort_source = 0x00
        assoc.dul.send_pdu(abort)  # as the reactor queues one on the network timeout
        time.sleep(0.2)
        assert peer.server.active_associations, "nothing written while the sender has the socket"
        turn.give_back()
        assert ended_within(assoc, 1.0), "written at once after the turn"
        deadline = time.monotonic() + 1.0
        while peer.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not peer.server.active_associations

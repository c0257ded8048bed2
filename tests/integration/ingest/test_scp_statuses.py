"""What a C-STORE sender hears when things go wrong: the SCP on a real socket, collaborators in memory
(no Kafka or MongoDB needed), so failures can be switched on at will."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from services.common.blob_store import LocalBlobStore
from services.common.ip_networks import network_of
from services.common.stores.organisations import CallingOrg
from services.common.topics import Topics
from services.gateway.dimse_exchange import answer_from_dul
from services.ingest import received_files
from services.ingest.acceptance import Acceptance
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.received_files import ReceivedFile
from services.ingest.scp import DicomReceiver
from services.ingest.settings import IngestSettings
from tests.unit.ingest.samples import RecordingBus, mr_study

TOPICS = Topics("t-")
CALLING_AE = "MODALITY1"


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def titles() -> dict[str, CallingOrg]:
    """What the organisation store says; tests change it."""
    return {CALLING_AE: CallingOrg("trust-a")}


@pytest.fixture
def receiver(tmp_path: Path, bus: RecordingBus, titles: dict[str, CallingOrg]) -> Iterator[DicomReceiver]:
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path),
        receipts=MemoryReceiptStore(),
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=10_000_000,
    )
    settings = IngestSettings(dicom_port=0, calling_ae_refresh_s=60, dicom_data_set_wait_s=2)
    receiver = DicomReceiver(acceptance, lambda: dict(titles), settings)
    receiver.start()
    yield receiver
    receiver.stop(grace_s=1)


def _send(receiver: DicomReceiver, dataset_bytes: bytes) -> tuple[int, str]:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="IMX")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dcmread(BytesIO(dataset_bytes)))
        return int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()


def test_success_only_after_the_event_is_published(receiver: DicomReceiver, bus: RecordingBus) -> None:
    assert _send(receiver, mr_study(401, n=1)[0]) == (0x0000, "")
    assert len(bus.on(TOPICS.ingested)) == 1


def test_kafka_down_is_out_of_resources_and_a_resend_succeeds(receiver: DicomReceiver, bus: RecordingBus) -> None:
    instance = mr_study(402, n=1)[0]
    bus.fail = 1
    assert _send(receiver, instance) == (0xA700, "try-again-later")
    assert not bus.on(TOPICS.ingested)
    assert _send(receiver, instance) == (0x0000, "")
    assert len(bus.on(TOPICS.ingested)) == 1


def test_an_instance_without_study_uid_fails_with_a900(receiver: DicomReceiver, bus: RecordingBus) -> None:
    ds = dcmread(BytesIO(mr_study(403, n=1)[0]))
    del ds.StudyInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    assert _send(receiver, buffer.getvalue()) == (0xA900, "missing-uid: StudyInstanceUID")
    assert [m.topic for m in bus.messages] == [TOPICS.quarantine]


def test_a_caller_whose_organisation_is_gone_is_not_authorised(
    receiver: DicomReceiver, bus: RecordingBus, titles: dict[str, CallingOrg]
) -> None:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="IMX")
    assert assoc.is_established
    try:
        titles.clear()  # the organisation was removed after the association opened
        receiver.calling_aets.refresh()
        status = assoc.send_c_store(dcmread(BytesIO(mr_study(404, n=1)[0])))
        assert int(status.Status) == 0x0124
    finally:
        assoc.release()
    assert not bus.messages


def test_a_calling_ae_title_sent_from_outside_its_organisations_networks_is_not_authorised(
    receiver: DicomReceiver, bus: RecordingBus, titles: dict[str, CallingOrg]
) -> None:
    """The title travels in the clear: whoever learns it could send as the organisation. Bound to the
    site's networks, it stores nothing from anywhere else."""
    titles[CALLING_AE] = CallingOrg("trust-a", (network_of("10.20.0.0/16"), network_of("fd00::/8")))
    receiver.calling_aets.refresh()
    assert _send(receiver, mr_study(405, n=1)[0]) == (0x0124, "calling-ae-not-from-its-networks")
    assert not bus.messages

    titles[CALLING_AE] = CallingOrg("trust-a", (network_of("10.20.0.0/16"), network_of("127.0.0.0/8")))
    receiver.calling_aets.refresh()
    assert _send(receiver, mr_study(405, n=1)[0]) == (0x0000, "")
    assert len(bus.on(TOPICS.ingested)) == 1


def _associate(receiver: DicomReceiver) -> Association:
    """An MR sender's association, waiting up to 15 s for each answer."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.dimse_timeout = 15
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="IMX")
    assert assoc.is_established
    return assoc


def _send_without_data_set(assoc: Association) -> tuple[C_STORE | None, float]:
    """What pynetdicom's SCU does with an empty data set: the command says one follows, none is sent."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = MRImageStorage
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.10.1.405"
    request.Priority = 2
    request.DataSet = BytesIO(b"")
    context_id = int(assoc.accepted_contexts[0].context_id or 0)
    started = time.monotonic()
    response = answer_from_dul(assoc, lambda: assoc.dimse.send_msg(request, context_id))
    return cast(C_STORE | None, response), time.monotonic() - started


def test_a_c_store_without_its_data_set_is_answered_promptly_and_quarantined(
    receiver: DicomReceiver, bus: RecordingBus
) -> None:
    assoc = _associate(receiver)
    try:
        response, took_s = _send_without_data_set(assoc)
        assert response is not None, "no answer: the SCP waited for a data set that never came"
        assert took_s < 5
        assert (int(response.Status or 0), str(response.ErrorComment)) == (0xC000, "truncated: FileMetaInformation")
        assert [m.topic for m in bus.messages] == [TOPICS.quarantine]
        # The association is still usable for the next request.
        status = assoc.send_c_store(dcmread(BytesIO(mr_study(406, n=1)[0])))
        assert int(status.Status) == 0x0000
    finally:
        assoc.release()


def test_a_data_set_that_begins_after_its_request_was_answered_is_dropped_and_the_association_goes_on(
    receiver: DicomReceiver, bus: RecordingBus
) -> None:
    """Late past the wait (a retransmit, a slow archive), the data set began a message of its own, with no
    command: the association was aborted, and the sender's next request failed with it."""
    assoc = _associate(receiver)
    try:
        response, _took_s = _send_without_data_set(assoc)
        assert response is not None and int(response.Status or 0) == 0xC000
        context_id = int(assoc.accepted_contexts[0].context_id or 0)
        late = b"\x08\x00\x16\x00\x02\x00\x00\x00MR"  # a data set's first bytes, then its last fragment
        for control, piece in ((0x00, late), (0x02, late)):
            fragment = P_DATA()
            fragment.presentation_data_value_list = [[context_id, bytes([control]) + piece]]
            assoc.dul.send_pdu(fragment)
        status = assoc.send_c_store(dcmread(BytesIO(mr_study(407, n=1)[0])))
        assert int(status.Status) == 0x0000 and assoc.is_established
        assert [m.topic for m in bus.messages] == [TOPICS.quarantine, TOPICS.ingested]
    finally:
        assoc.release()


def test_while_the_organisations_cannot_be_read_a_sender_is_told_to_try_again(
    tmp_path: Path, bus: RecordingBus
) -> None:
    """MongoDB away when ingest started: callers were rejected at association as not recognized, a
    permanent rejection after which senders stopped sending."""
    readable = False

    def titles() -> dict[str, CallingOrg]:
        if not readable:
            raise ConnectionError("mongo down")
        return {CALLING_AE: CallingOrg("trust-a")}

    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path), receipts=MemoryReceiptStore(), bus=bus, topics=TOPICS, max_instance_bytes=10**7
    )
    receiver = DicomReceiver(acceptance, titles, IngestSettings(dicom_port=0, calling_ae_refresh_s=60))
    receiver.start()
    try:
        instance = mr_study(408, n=1)[0]
        assert _send(receiver, instance) == (0xA700, "try-again-later")
        readable = True
        assert receiver.calling_aets.refresh()
        assert _send(receiver, instance) == (0x0000, "")
        assert [m.topic for m in bus.messages] == [TOPICS.ingested]
    finally:
        receiver.stop(grace_s=1)


def test_a_disk_that_fills_while_a_data_set_arrives_is_a_try_again_not_an_abort(
    receiver: DicomReceiver, bus: RecordingBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write's OSError, raised in the association's receiving thread, aborted the association (and
    printed a traceback outside the logs) where the sender should hear A700 and send it again."""
    made = received_files.ReceivedFiles.__call__
    full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC

    def on_a_full_disk(self: Any, *args: Any, **kwargs: Any) -> Any:
        file = made(self, *args, **kwargs)
        os.dup2(full, file.fd)
        return file

    monkeypatch.setattr(received_files.ReceivedFiles, "__call__", on_a_full_disk)
    try:
        assert _send(receiver, mr_study(409, n=1)[0]) == (0xA700, "try-again-later")
    finally:
        os.close(full)
    monkeypatch.undo()
    assert _send(receiver, mr_study(409, n=1)[0]) == (0x0000, "")
    assert [m.topic for m in bus.messages] == [TOPICS.ingested]


def test_a_data_set_over_the_limit_is_refused_without_being_written_whole(
    tmp_path: Path, bus: RecordingBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole data set was written to the blob volume before its size was checked: one sender's 50 GB
    filled the volume every stage shares. Past the limit nothing more is written; it is refused as
    too large (A701), and quarantined with the size the sender sent."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian as EXPLICIT

    limit = 300_000
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"), receipts=MemoryReceiptStore(), bus=bus, topics=TOPICS,
        max_instance_bytes=limit,
    )  # fmt: skip
    settings = IngestSettings(dicom_port=0, calling_ae_refresh_s=60, max_instance_bytes=limit, blob_dir=tmp_path / "in")
    receiver = DicomReceiver(acceptance, lambda: {CALLING_AE: CallingOrg("trust-a")}, settings)
    for name in ("NamedTemporaryFile", "create_file_meta", "write_file_meta_info"):  # process-wide: restored
        monkeypatch.setattr(dimse_messages, name, getattr(dimse_messages, name))
    receiver.start()
    made = dimse_messages.NamedTemporaryFile
    files: list[ReceivedFile] = []
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", lambda **kw: files.append(made(**kw)) or files[-1])
    try:
        dataset = dcmread(BytesIO(mr_study(409, n=1)[0]))
        dataset.Rows, dataset.Columns = 1024, 512
        dataset.PixelData = np.zeros((1024, 512), dtype=np.uint16).tobytes()  # 1 MiB of pixels
        dataset.file_meta.TransferSyntaxUID = EXPLICIT
        ae = AE(ae_title=CALLING_AE)
        ae.add_requested_context(MRImageStorage, EXPLICIT)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="IMX")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
    finally:
        receiver.stop(grace_s=1)
    assert (int(status.Status), str(status.get("ErrorComment", ""))) == (0xA701, f"too-large: {limit}")
    assert len(bus.on(TOPICS.quarantine)) == 1 and not bus.on(TOPICS.ingested)
    [file] = files
    assert file.size <= limit < file.offered  # what was sent, and the most that was ever on disk


def test_video_and_multi_component_jpeg_2000_are_negotiated(receiver: DicomReceiver) -> None:
    """Video Endoscopic and Photographic Image Storage were listed but could never be received by C-STORE
    (their transfer syntaxes were refused at association), though STOW-RS took the same instances."""
    from pydicom.uid import HEVCMP51, JPEG2000MC, MPEG4HP41
    from pynetdicom.sop_class import VideoEndoscopicImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title=CALLING_AE)
    for syntax in (MPEG4HP41, HEVCMP51, JPEG2000MC):
        ae.add_requested_context(VideoEndoscopicImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="IMX")
    assert assoc.is_established
    try:
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == {MPEG4HP41, HEVCMP51, JPEG2000MC}


def test_the_called_ae_title_is_checked_when_asked(tmp_path: Path, bus: RecordingBus) -> None:
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path), receipts=MemoryReceiptStore(), bus=bus, topics=TOPICS, max_instance_bytes=10**7
    )
    settings = IngestSettings(dicom_port=0, calling_ae_refresh_s=60, dicom_require_called_ae=True)
    receiver = DicomReceiver(acceptance, lambda: {CALLING_AE: CallingOrg("trust-a")}, settings)
    receiver.start()
    try:
        ae = AE(ae_title=CALLING_AE)
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        wrong = ae.associate("127.0.0.1", receiver.port, ae_title="OTHER-PACS")
        assert wrong.is_rejected
        right = ae.associate("127.0.0.1", receiver.port, ae_title=settings.ae_title)
        assert right.is_established
        right.release()
    finally:
        receiver.stop(grace_s=1)


def test_a_data_set_that_is_not_the_instance_its_command_names_is_refused(
    receiver: DicomReceiver, bus: RecordingBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command named instance X and carried instance Y: it was answered success for X, stored with
    X in its file meta and Y in its data set, and published as Y."""
    from pydicom.uid import generate_uid
    from pynetdicom import association

    encode = association.encode

    def another_instance(dataset: Any, *args: Any) -> bytes | None:
        other = dataset.copy()
        other.SOPInstanceUID = generate_uid()
        return encode(other, *args)

    monkeypatch.setattr(association, "encode", another_instance)  # the sender's encoding of the data set only
    assert _send(receiver, mr_study(411, n=1)[0]) == (0xA900, "sop-mismatch: SOPInstanceUID")
    assert not bus.on(TOPICS.ingested)
    monkeypatch.undo()
    assert _send(receiver, mr_study(411, n=1)[0]) == (0x0000, "")  # the same instance, named rightly

"""What ingest's SCP encodes itself (services/ingest/dimse_encoding.py) is byte for byte what pynetdicom
and pydicom would write: the received file's meta group and the C-STORE response."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from services.ingest import dimse_encoding
from services.ingest.dimse_encoding import (
    LOG_HANDLERS,
    Unwritten,
    c_store_response,
    file_meta_bytes,
)
from services.ingest.scp import status_dataset
from services.ingest.settings import IngestSettings
from tests.unit.ingest.scp_servers import receive_to_files_for_this_test, serve_stores

CT = "1.2.840.10008.5.1.4.1.1.2"
# Fixed, not generate_uid(): the ids of parametrized tests must be the same in every pytest-xdist worker.
UIDS = [
    "1.2",
    "1.2.3",
    "2.25." + "9" * 39,
    "1." + "2" * 62,
    "0.0",
    "1.2.826.0.1.3680043.8.498.96956165064306010349887555240834758280",
]


def pydicom_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    fp = DicomBytesIO()
    write_file_meta_info(
        fp, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    )
    return fp.getvalue()


@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless])
def test_file_meta_is_pydicoms(sop_instance: str, syntax: str) -> None:
    fields = dimse_encoding.create_file_meta(sop_class_uid=CT, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    assert file_meta_bytes(fields) == pydicom_meta(CT, sop_instance, syntax)


def outcome(write: Callable[[], bytes]) -> object:
    """What a write gives: its bytes, or the type and text of what it raised (warnings ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return write()
        except Exception as exc:
            return type(exc), str(exc)


@pytest.mark.parametrize(
    "sop_instance",
    ["1.02.3", "1.2.3a", "1.2.", "1." + "2" * 63, "1.2\\3.4", "1.2.3 ", "1.2.\u0663", ""],
)
def test_a_uid_this_module_does_not_write_is_left_to_pydicom(sop_instance: str) -> None:
    fields = dimse_encoding.create_file_meta(
        sop_class_uid=CT, sop_instance_uid=sop_instance, transfer_syntax=ExplicitVRLittleEndian
    )
    with pytest.raises(Unwritten):
        file_meta_bytes(fields)

    def ours() -> bytes:
        fp = DicomBytesIO()
        dimse_encoding.write_file_meta_info(fp, fields)
        return fp.getvalue()

    assert outcome(ours) == outcome(lambda: pydicom_meta(CT, sop_instance, ExplicitVRLittleEndian))


@settings(max_examples=300, deadline=None)
@given(uid=st.text(alphabet="0123456789.", max_size=70), comment=st.text(max_size=70))
def test_whatever_is_written_here_is_what_pydicom_writes(uid: str, comment: str) -> None:
    fields = dimse_encoding.create_file_meta(
        sop_class_uid=CT, sop_instance_uid=uid, transfer_syntax=ExplicitVRLittleEndian
    )
    try:
        ours = file_meta_bytes(fields)
    except Unwritten:
        pass
    else:
        assert ours == pydicom_meta(CT, uid, ExplicitVRLittleEndian)
    try:
        command = c_store_response(9, CT, uid, 0xC000, comment)
    except Unwritten:
        pass
    else:
        assert pynetdicom_pdvs(response(9, CT, uid, 0xC000, comment)) == [b"\x03" + command]


def test_a_file_meta_dataset_is_written_by_pydicom() -> None:
    meta = create_file_meta(sop_class_uid=CT, sop_instance_uid="1.2.3", transfer_syntax=ExplicitVRLittleEndian)
    ours = DicomBytesIO()
    dimse_encoding.write_file_meta_info(ours, meta)
    assert ours.getvalue() == pydicom_meta(CT, "1.2.3", ExplicitVRLittleEndian)


def response(
    message_id: int, sop_class: str | None, sop_instance: str | None, status: int, comment: str | None
) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    rsp.ErrorComment = comment
    return rsp


def pynetdicom_pdvs(rsp: C_STORE, max_pdu: int = 16384) -> list[bytes]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return [pdata.presentation_data_value_list[0][1] for pdata in message.encode_msg(1, max_pdu)]


@pytest.mark.parametrize("sop_instance", [*UIDS, None])
@pytest.mark.parametrize("message_id", [0, 1, 0xFFFF])
@pytest.mark.parametrize(
    ("status", "comment"),
    [
        (0x0000, None),
        (0xA700, "try-again-later"),
        (0xC000, "not-dicom"),
        (0x0110, "processing-failure"),
        (0xA900, "ab"),
        (0xB000, "x" * 64),
    ],
)
def test_response_is_pynetdicoms(message_id: int, sop_instance: str | None, status: int, comment: str | None) -> None:
    rsp = response(message_id, CT, sop_instance, status, comment)
    assert pynetdicom_pdvs(rsp) == [b"\x03" + c_store_response(message_id, CT, sop_instance, status, comment)]


def test_response_without_sop_class_is_pynetdicoms() -> None:
    rsp = response(5, None, "1.2.3", 0, None)
    assert pynetdicom_pdvs(rsp) == [b"\x03" + c_store_response(5, None, "1.2.3", 0, None)]


@pytest.mark.parametrize("comment", ["x" * 65, "é", "a\\b"])
def test_a_comment_pydicom_would_write_differently_is_left_to_it(comment: str) -> None:
    with pytest.raises(Unwritten):
        c_store_response(1, CT, "1.2.3", 0xC000, comment)
    assert dimse_encoding._response_command(response(1, CT, "1.2.3", 0xC000, comment)) is None


def test_other_messages_are_left_to_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 1
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    with_offending = response(1, CT, "1.2.3", 0xA900, None)
    with_offending.OffendingElement = [0x00100010]
    for primitive in (request, echo, with_offending):
        assert dimse_encoding._response_command(primitive) is None


class _Dimse:
    """The part of pynetdicom's DIMSEServiceProvider that `send_store_responses_directly` uses."""

    def __init__(self, maximum_pdu_size: int) -> None:
        self.maximum_pdu_size = maximum_pdu_size
        self.queued: list[Any] = []
        self.dul = SimpleNamespace(send_pdu=self.queued.append)
        self.by_pynetdicom: list[Any] = []

    def send_msg(self, primitive: Any, context_id: int) -> None:
        self.by_pynetdicom.append(primitive)


def _association(maximum_pdu_size: int, dimse_sent_handlers: list[Any] | None = None) -> Any:
    handlers = dimse_sent_handlers or []
    assoc = SimpleNamespace(dimse=_Dimse(maximum_pdu_size), get_handlers=lambda event: handlers)
    dimse_encoding.send_store_responses_directly(assoc)  # type: ignore[arg-type]
    return assoc


@pytest.mark.parametrize("maximum_pdu_size", [0, 16384])
def test_a_response_is_queued_as_one_pdu(maximum_pdu_size: int) -> None:
    assoc = _association(maximum_pdu_size)
    rsp = response(3, CT, "1.2.3", 0xA700, "try-again-later")
    assoc.dimse.send_msg(rsp, 5)
    assert assoc.dimse.by_pynetdicom == []
    assert [p.presentation_data_value_list for p in assoc.dimse.queued] == [
        [(5, b"\x03" + c_store_response(3, CT, "1.2.3", 0xA700, "try-again-later"))]
    ]


def test_a_response_larger_than_the_peers_pdu_is_left_to_pynetdicom() -> None:
    assoc = _association(64)  # pynetdicom would send it in fragments
    rsp = response(3, CT, "1.2.3", 0, None)
    assoc.dimse.send_msg(rsp, 1)
    assert assoc.dimse.by_pynetdicom == [rsp] and assoc.dimse.queued == []


def test_with_a_handler_on_dimse_sent_pynetdicom_sends() -> None:
    assoc = _association(0, [(print, None)])
    rsp = response(3, CT, "1.2.3", 0, None)
    assoc.dimse.send_msg(rsp, 1)
    assert assoc.dimse.by_pynetdicom == [rsp] and assoc.dimse.queued == []


# ---- over a real association on localhost


class _Answers:
    def __init__(self) -> None:
        self.statuses: list[Dataset] = []
        self.files: list[bytes] = []
        self.acceptors: list[Any] = []
        self.port = 0

    def store(self, event: Event) -> Dataset:
        self.files.append(Path(event.dataset_path).read_bytes())
        self.acceptors.append(event.assoc)
        return self.statuses.pop(0)


@pytest.fixture
def answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Answers]:
    receive_to_files_for_this_test(tmp_path / "received", monkeypatch)
    answers = _Answers()
    server, answers.port = serve_stores(
        IngestSettings(dicom_port=0, blob_dir=tmp_path, dicom_timeout_s=10), answers.store
    )
    yield answers
    server.shutdown()


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x01\x02" * 5000
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


def test_a_sender_hears_each_status_and_comment(answers: _Answers, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded_by_pynetdicom: list[C_STORE_RSP] = []
    encode_msg = C_STORE_RSP.encode_msg

    def counted(self: C_STORE_RSP, *args: Any) -> Any:
        encoded_by_pynetdicom.append(self)
        return encode_msg(self, *args)

    monkeypatch.setattr(C_STORE_RSP, "encode_msg", counted)
    answers.statuses = [
        status_dataset(0x0000),
        status_dataset(0xA700, "try-again-later"),
        status_dataset(0xC000, "not-dicom"),
    ]
    sender = AE(ae_title="SENDER")
    sender.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = sender.associate("127.0.0.1", answers.port, ae_title="IMX")
    assert assoc.is_established
    sent = [_ct() for _ in range(3)]
    try:
        heard = [assoc.send_c_store(ds) for ds in sent]
    finally:
        assoc.release()
    assert [(int(rsp.Status), rsp.get("ErrorComment")) for rsp in heard] == [
        (0x0000, None),
        (0xA700, "try-again-later"),
        (0xC000, "not-dicom"),
    ]
    for ds, received in zip(sent, answers.files, strict=True):
        meta = pydicom_meta(CTImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        assert received[:132] == bytes(128) + b"DICM"
        assert received[132 : 132 + len(meta)] == meta
    assert encoded_by_pynetdicom == []  # every response took the direct path
    acceptor = answers.acceptors[0]
    for event, _ in LOG_HANDLERS:
        assert not acceptor.get_handlers(event)


def test_fields_are_what_pynetdicoms_create_file_meta_takes() -> None:
    fields = dimse_encoding.create_file_meta(
        sop_class_uid=CT, sop_instance_uid="1.2", transfer_syntax=ExplicitVRLittleEndian
    )
    meta = create_file_meta(**fields._asdict())
    assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (
        CT,
        "1.2",
        ExplicitVRLittleEndian,
    )

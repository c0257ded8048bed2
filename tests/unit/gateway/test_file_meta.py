"""The file meta group is read with struct as pydicom reads it (the three UIDs a C-STORE needs and
where the data set starts); anything but a plain meta group is left to pydicom."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.gateway.dimse_store import DimseStore, split_meta
from services.gateway.fetched import Fetched
from services.gateway.file_meta import plain_meta, plain_meta_of
from services.gateway.targets import DicomTarget
from services.proto_gen.imx.v1 import events_pb2


def part10(syntax: str = ExplicitVRLittleEndian, sop_instance: str = "1.2.3.45", **meta_extra: object) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    for name, value in meta_extra.items():
        setattr(meta, name, value)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientName = CTImageStorage, sop_instance, "Test^Meta"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def by_pydicom(data: bytes) -> tuple[str, str, str, int]:
    meta, offset = split_meta(Fetched(data=data))
    return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), offset


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("sop_instance", ["1.2.3.45", "1.2.3.4", "2.25." + "9" * 39])
def test_a_plain_meta_group_reads_as_pydicom_reads_it(syntax: str, sop_instance: str) -> None:
    data = part10(syntax, sop_instance)
    assert plain_meta(data) == by_pydicom(data)


def test_more_elements_in_the_meta_group_are_stepped_over() -> None:
    data = part10(
        ImplementationVersionName="IMX_1",
        SourceApplicationEntityTitle="SENDER",
        PrivateInformationCreatorUID="1.2.3",
        PrivateInformation=b"\x01\x02",
    )
    assert plain_meta(data) == by_pydicom(data)
    assert plain_meta_of(Fetched(data=data)) == by_pydicom(data)


def test_an_object_on_disk_reads_as_one_in_memory(tmp_path: Path) -> None:
    data = part10()
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    assert plain_meta_of(Fetched.in_file(path)) == by_pydicom(data)


def test_anything_but_a_plain_meta_group_is_left_to_pydicom() -> None:
    data = part10()
    assert plain_meta(data[:128] + b"DICX" + data[132:]) is None, "no DICM prefix"
    assert plain_meta(data[:200]) is None, "cut before the data set"
    non_conformant = part10(sop_instance="1.02.3")
    assert plain_meta(non_conformant) is None
    assert by_pydicom(non_conformant)[1] == "1.02.3", "pydicom still reads it"
    no_syntax = bytearray(data)
    at = data.index(b"\x02\x00\x10\x00UI")
    no_syntax[at + 2 : at + 4] = b"\x11\x00"  # (0002,0011): the transfer syntax is missing
    assert plain_meta(bytes(no_syntax)) is None


def test_an_object_without_a_meta_group_is_never_sent() -> None:
    store = DimseStore(DicomTarget("PACS", "127.0.0.1", 1))  # never reached: nothing to send
    try:
        for data in (b"not dicom at all", b"\0" * 128 + b"DICM" + b"\x08\x00\x05\x00CS\x00\x00"):
            result = store.store(Fetched(data=data), events_pb2.PartnerDelivery())
            assert (result.ok, result.status_detail, result.retryable) == (False, "no-file-meta", False)
    finally:
        store.close()

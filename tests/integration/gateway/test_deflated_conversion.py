"""A deflated instance for a PACS that accepts only uncompressed syntaxes (storescp's default) is
inflated a piece at a time into a file and sent from there: a small deflate that inflates to hundreds of
MiB (a deflate bomb under ingest's limit, `make chaos` sends them) must not be decoded whole in the
gateway's memory (before: pydicom read and re-encoded it, ~4x its inflated size: 3.3 GiB for 768 MiB)."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset

from services.gateway.dimse_store import DimseStore, inflated_copy
from services.gateway.fetched import Fetched
from services.gateway.targets import DicomTarget
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.peers import storescp

MIB = 1024 * 1024
MR = "1.2.840.10008.5.1.4.1.1.4"
SOP = "2.25.112233445566778899"


def deflated_instance(path: Path, bulk_bytes: int) -> bytes:
    """A Part 10 file in Deflated Explicit VR Little Endian whose body inflates to ~`bulk_bytes`;
    returns the body inflated (what the PACS must receive)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR, SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.1", "2.25.2"
    ds.Modality, ds.PatientID = "MR", "DEFLATED"
    header = BytesIO()
    ds.save_as(header, implicit_vr=False, little_endian=True)
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 10) + b"IMX CHAOS "
    bulk = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, bulk_bytes)
    body = header.getvalue() + creator + bulk
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(body)
    zeros = bytes(MIB)
    for _ in range(bulk_bytes // MIB):
        deflated += packer.compress(zeros)
    deflated += packer.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(MR), UID(SOP)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1453.99")
    group = DicomBytesIO()
    write_file_meta_info(group, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + group.getvalue() + deflated)
    return body + bytes(bulk_bytes)


def test_inflating_holds_a_piece_at_a_time(tmp_path: Path) -> None:
    source = tmp_path / "deflated.dcm"
    inflated = deflated_instance(source, 256 * MIB)
    _meta, offset = split_dataset(source)
    tracemalloc.start()
    copy = inflated_copy(source, offset)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * MIB, f"inflating held {peak / MIB:.0f} MiB"
    assert copy.read_bytes() == inflated


def test_a_broken_deflate_stream_is_a_permanent_failure_and_leaves_no_file(tmp_path: Path) -> None:
    source = tmp_path / "broken.dcm"
    deflated_instance(source, MIB)
    _meta, offset = split_dataset(source)
    data = bytearray(source.read_bytes())
    data[offset + 40 : offset + 80] = b"\xff" * 40
    source.write_bytes(bytes(data))
    with pytest.raises(zlib.error):
        inflated_copy(source, offset)
    assert list(tmp_path.iterdir()) == [source]


def test_a_deflated_instance_is_inflated_into_a_file_not_decoded_in_memory(tmp_path: Path) -> None:
    source = tmp_path / "deflated.dcm"
    inflated = deflated_instance(source, 256 * MIB)
    with storescp(tmp_path) as pacs:
        store = DimseStore(DicomTarget("STORESCP", "127.0.0.1", pacs.port))
        try:
            tracemalloc.start()
            result = store.store(Fetched.in_file(source), events_pb2.PartnerDelivery())
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            store.close()
        files = pacs.files()
    assert result.ok, result.status_detail
    # Decoding held ~4x the whole (1 GiB for this one); streaming through pynetdicom's unbounded PDU
    # queue held whatever was read ahead of the PACS (~300 MB of a 768 MiB instance); now a few PDUs.
    assert peak < 16 * MIB, f"the gateway held {peak / MIB:.0f} MiB to send a 256 MiB instance"
    [received] = files
    meta, offset = split_dataset(received)
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    with received.open("rb") as stored:
        stored.seek(offset)
        assert stored.read(len(inflated) + 1) == inflated, "the data set is the deflated body, inflated"
    assert dcmread(received, stop_before_pixels=True).SOPInstanceUID == SOP
    assert list(tmp_path.glob("*.dcm")) == [source], "the inflated copy is removed after the send"

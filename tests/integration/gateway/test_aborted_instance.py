"""An instance the PACS aborts the association for, while it keeps taking associations, is dead-lettered
with the reason "aborted" after a few attempts; the partner's other instances go on being stored.

dcmtk's storescp aborts on a PDV of odd length ("Odd Fragment Length"), which a malformed data set sent
as delivered can be: the full `make chaos` with a PACS that takes deflate (`+xd`) had its gateway retry
the first such input every 30 s for 15 minutes as if the PACS were away, and store nothing else
(2,007 of 2,008 accepted malformed inputs unaccounted).

A deflated data set whose deflated body has odd length is not malformed in that way: it is padded to
even length when sent (PS3.5 A.5), and stored. Before, 791 of 2,008 chaos inputs were still owed when
the drain gave up, the gateway spending three aborted attempts on each odd deflated one."""

from __future__ import annotations

import random
import struct
import zlib
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from services.gateway.policy import RetryPolicy
from services.gateway.targets import ABORTED
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.conftest import Instance, Partner, gateway_thread, wait_until
from tests.integration.gateway.peers import storescp

MR = "1.2.840.10008.5.1.4.1.1.4"


def part10(sop: str, syntax: UID, body: bytes) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(MR), UID(sop)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1453.99")
    group = DicomBytesIO()
    write_file_meta_info(group, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + group.getvalue() + body


def header_of(study: str, series: str, sop: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientID = "MR", "DEFLATED"
    header = BytesIO()
    ds.save_as(header, implicit_vr=False, little_endian=True)
    return header.getvalue()


def odd_length_instance(study: str, series: str, sop: str) -> Instance:
    """An explicit VR little endian MR whose data set ends in a 3-byte OB: odd length, malformed."""
    bulk = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 3) + b"odd"
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 10) + b"IMX CHAOS "
    body = header_of(study, series, sop) + creator + bulk
    return Instance(study, series, sop, MR, str(ExplicitVRLittleEndian), part10(sop, ExplicitVRLittleEndian, body))


def deflated_instance(study: str, series: str, sop: str, odd: bool) -> Instance:
    """A small MR in Deflated Explicit VR Little Endian whose deflated body has an odd (or even) length."""
    for variant in range(100):
        value = bytes(range(256)) * 16 + random.Random(variant).randbytes(64)  # the deflated length varies
        bulk = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, len(value)) + value
        creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 10) + b"IMX CHAOS "
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = packer.compress(header_of(study, series, sop) + creator + bulk) + packer.flush()
        if len(body) % 2 == int(odd):
            break
    else:
        raise AssertionError("no variant deflated to the wanted parity")
    data = part10(sop, DeflatedExplicitVRLittleEndian, body)
    return Instance(study, series, sop, MR, str(DeflatedExplicitVRLittleEndian), data)


def test_an_instance_whose_transfer_the_pacs_aborts_is_dead_lettered_and_the_feed_goes_on(
    partner: Partner, ct_study: list, tmp_path: Path
) -> None:
    study, series = "2.25.4001", "2.25.4002"
    poison = odd_length_instance(study, series, "2.25.4003")
    odd_deflated = deflated_instance(study, series, "2.25.4004", odd=True)
    even_deflated = deflated_instance(study, series, "2.25.4005", odd=False)
    instances = [ct_study[0], poison, odd_deflated, even_deflated, *ct_study[1:4]]
    with storescp(tmp_path, ("+xd",)) as pacs:  # takes deflated data sets as sent
        partner.publish(instances)
        policy = RetryPolicy(max_attempts=10, initial_s=0.1, cap_s=0.5, jitter_s=0.1, few_attempts=2)
        with gateway_thread(partner.settings(pacs.url, idle_exit_s=3.0, policy=policy)) as (_stop, done):
            # Before: "connection-lost" counted as the PACS being away, so the poison instance was tried
            # again for ever (backoff up to 30 s, no attempt spent) and nothing after it was stored.
            wait_until(done.done, 60, "the gateway to settle every delivery and go idle")
            counters = done.result()
        files = pacs.files()
    assert (counters.stored, counters.dead_lettered) == (6, 1)
    stored_sops = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert stored_sops == {i.sop for i in instances if i is not poison}
    receipts = {r.instance.sop_instance_uid: r for r in partner.receipts(7)}
    dead = receipts[poison.sop]
    assert dead.status == events_pb2.STORE_STATUS_DEAD_LETTERED and dead.detail == ABORTED
    assert dead.attempts == 2, "few attempts, not max_attempts, nor for ever"
    for deflated in (odd_deflated, even_deflated):
        assert receipts[deflated.sop].status == events_pb2.STORE_STATUS_STORED
        assert receipts[deflated.sop].attempts == 1, "an odd deflated body is padded, not aborted first"
    stored = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    inflated = dcmread(stored[odd_deflated.sop])
    assert inflated[0x0009, 0x1010].value.startswith(bytes(range(256))), "the padded stream inflates whole"

"""Issue 7 item 6: anything ingest accepts is delivered, and its size never shows in any process's memory.

A synthetic Enhanced CT of 1,200 frames of 512 x 512 x 16 bits (600 MiB of pixel data, written to disk
a frame at a time) goes in by C-STORE (dcmtk's storescu), through routing and de-identification
(the basic profile), and out through the partner gateway by C-STORE into dcmtk's storescp. The pixel
data that arrive must hash to what was sent, the header must be de-identified, and every imx process
(the five services and the gateway) must have peaked (VmHWM) well under two copies of the instance.

The test runs its own stack, so the peaks measured are this instance's alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pymongo import MongoClient

from services.common.control_channel import control_channel
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tests.e2e.stack import ROOT, SERVICES, Stack, running_stack
from tools.dicom_peers import start_storescp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("storescu") is None or shutil.which("storescp") is None,
        reason="dcmtk's storescu and storescp are installed by make setup",
    ),
]

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ROWS = COLUMNS = 512
FRAMES = 1200
FRAME_BYTES = ROWS * COLUMNS * 2
PIXEL_BYTES = FRAMES * FRAME_BYTES  # 629,145,600 bytes: 600 MiB
PATIENT_NAME = "Large^Instance^Patient"
SENDER_AE = "BIGTRUST"
PARTNER = "big-research"
PEAK_LIMIT = 1.5  # times the instance's size, for any one process (the issue: "well under two copies")


def _pixel_data_header(length: int) -> bytes:
    """(7FE0,0010) OW, explicit VR little endian (PS3.5 7.1.2)."""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)


def write_large_instance(path: Path) -> tuple[str, str, str]:
    """Write the instance a frame at a time; returns (SOP Instance UID, Study UID, SHA-256 of Pixel Data)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_CT
    meta.MediaStorageSOPInstanceUID = sop = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20260115"
    ds.ContentDate = "20260115"
    ds.AccessionNumber = "ACC-LARGE-1"
    ds.Modality = "CT"
    ds.Manufacturer = "imx synthetic"
    ds.InstitutionName = "Large Instance Hospital"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "LARGE-0001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = FRAMES
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    pixels = hashlib.sha256()
    base = np.random.default_rng(7).integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16)
    with path.open("wb") as out:
        dcmwrite(out, ds, enforce_file_format=True)
        out.write(_pixel_data_header(PIXEL_BYTES))
        for frame in range(FRAMES):
            data = (base + frame).astype("<u2").tobytes()  # a different frame each time, one at a time
            pixels.update(data)
            out.write(data)
    return sop, study, pixels.hexdigest()


def pixel_data_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and length of the Pixel Data value of an explicit VR little endian file, read in pieces."""
    with path.open("rb") as file:
        dcmread(file, stop_before_pixels=True)
        group, element, vr, _reserved, length = struct.unpack("<HH2sHI", file.read(12))
        assert (group, element, vr) == (0x7FE0, 0x0010, b"OW")
        digest = hashlib.sha256()
        while piece := file.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest(), length


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process has had (/proc/<pid>/status, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def service_pids(stack: Stack) -> dict[str, int]:
    """The stack's service processes, found by their topic prefix (each stack has its own)."""
    found: dict[str, int] = {}
    marker = f"IMX_TOPIC_PREFIX={stack.prefix}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker not in environment or b"-m" not in command:
            continue
        module = command[command.index(b"-m") + 1].decode()
        for service in SERVICES:
            if module == f"services.{service}":
                found[service] = int(entry.name)
    assert set(found) == set(SERVICES), found
    return found


@pytest.fixture(scope="module")
def big_stack(
    kafka_bootstrap: str, kafka_partner_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Services of their own: the peaks they report are this test's."""
    with running_stack(
        kafka_bootstrap, kafka_partner_bootstrap, mongo_uri, tmp_path_factory.mktemp("e2e-large")
    ) as running:
        yield running


def configure(stack: Stack) -> admin_pb2.AddPartnerReply:
    with control_channel(stack.grpc_address("ingest")) as channel:
        admin_pb2_grpc.OrganisationAdminStub(channel).AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(org_id="big-trust", ae_titles=[SENDER_AE])
            )
        )
    with control_channel(stack.grpc_address("delivery")) as channel:
        added: admin_pb2.AddPartnerReply = admin_pb2_grpc.PartnerAdminStub(channel).AddPartner(
            admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=PARTNER))
        )
    with control_channel(stack.grpc_address("routing")) as channel:
        admin_pb2_grpc.RoutingAdminStub(channel).AddRoute(
            admin_pb2.AddRouteRequest(
                route=admin_pb2.Route(
                    route_id="big-research",
                    partner_id=PARTNER,
                    profile="basic",
                    enabled=True,
                    match=admin_pb2.RouteMatch(source_orgs=["big-trust"]),
                )
            )
        )
    return added


def wait_until_delivered(stack: Stack, timeout_s: float) -> None:
    """Delivery records what it sent a partner before publishing the feed (docs/delivery.md)."""
    deadline = time.monotonic() + timeout_s
    with MongoClient(stack.mongo, serverSelectionTimeoutMS=5000) as client:
        delivered = client[stack.db]["delivered_instances"]
        while delivered.count_documents({"_id": {"$regex": f"^{PARTNER}/"}}) == 0:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not delivered in {timeout_s} s; deid log ends:\n{stack.log_tail('deid')}\n"
                    f"ingest log ends:\n{stack.log_tail('ingest')}"
                )
            time.sleep(0.5)


@pytest.mark.timeout(900)
def test_a_600_mib_instance_is_delivered_de_identified_and_no_process_holds_two_copies(
    big_stack: Stack, tmp_path: Path
) -> None:
    stack = big_stack
    started = time.monotonic()
    source = tmp_path / "large.dcm"
    sop, study, sent_pixels = write_large_instance(source)
    size = source.stat().st_size
    assert size >= 600 * 1000 * 1000
    added = configure(stack)
    access = added.kafka_access
    phases = {"generate": time.monotonic() - started}

    mark = time.monotonic()
    subprocess.run(
        ["storescu", "-xe", "-aet", SENDER_AE, "-aec", "IMX", "127.0.0.1", str(stack.ingest_dicom), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    phases["c-store in"] = time.monotonic() - mark
    mark = time.monotonic()
    wait_until_delivered(stack, timeout_s=180)
    phases["routing, deid, delivery"] = time.monotonic() - mark

    pacs = start_storescp(tmp_path / "pacs", ae_title="BIGPACS")
    try:
        mark = time.monotonic()
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "gateway",
                "run",
                "--partner",
                PARTNER,
                "--target",
                pacs.url,
                "--bootstrap",
                access.bootstrap,
                "--username",
                access.username,
                "--state-dir",
                str(tmp_path / "gateway-state"),
                "--idle-exit",
                "3",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "IMX_TOPIC_PREFIX": stack.prefix,
                "IMX_GATEWAY_PASSWORD": access.password,
                "IMX_GATEWAY_DICOMWEB_KEY": added.dicomweb_key,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # Its own peak (VmHWM), read until it exits. Not wait4's ru_maxrss: that counts this test process's
        # memory at the fork as the child's (a pytest worker holding ~900 MB made a 128 MiB gateway read 905).
        gateway_peak = 0
        while gateway.poll() is None:
            with contextlib.suppress(OSError, AssertionError):  # it may be gone between the poll and the read
                gateway_peak = max(gateway_peak, peak_rss_bytes(gateway.pid))
            time.sleep(0.2)
        output = gateway.stdout.read().decode(errors="replace") if gateway.stdout else ""
        phases["gateway out"] = time.monotonic() - mark
        assert gateway.returncode == 0, output
        files = pacs.files()
    finally:
        pacs.stop()

    assert len(files) == 1, (files, output)
    received = files[0]
    received_pixels, length = pixel_data_sha256(received)
    assert (received_pixels, length) == (sent_pixels, PIXEL_BYTES), "the pixel data arrive as sent"
    header = dcmread(received, stop_before_pixels=True)
    assert header.PatientIdentityRemoved == "YES"
    assert str(header.PatientName) != PATIENT_NAME and header.PatientID != "LARGE-0001"
    assert header.SOPInstanceUID != sop and header.StudyInstanceUID != study
    assert "InstitutionName" not in header or header.InstitutionName != "Large Instance Hospital"
    assert header.NumberOfFrames == FRAMES

    peaks = {service: peak_rss_bytes(pid) for service, pid in service_pids(stack).items()}
    assert gateway_peak > 0, "the gateway's peak was read while it ran"
    peaks["gateway"] = gateway_peak
    mib = 1024 * 1024
    print(f"\ninstance: {size / mib:.0f} MiB ({size:,} bytes), {FRAMES} frames")
    print("peak resident memory (VmHWM) per imx process:")
    for name, peak in peaks.items():
        print(f"  {name:9s} {peak / mib:7.0f} MiB  ({peak / size:.2f} x the instance)")
    print("phases: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items()))
    print(f"total: {time.monotonic() - started:.1f} s")
    too_big = {name: peak for name, peak in peaks.items() if peak >= PEAK_LIMIT * size}
    assert not too_big, f"over {PEAK_LIMIT} x the instance: {too_big}"

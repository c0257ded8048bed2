"""Deflated inputs (PS3.5 A.5) are inflated a piece at a time into a temporary file and de-identified
through a memory map, like explicit VR little endian ones: released deflated with the same data set as
before, refused with a reason when their stream is broken, and never held whole in memory."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from services.common.blob_store import LocalBlobStore
from services.common.topics import Topics
from services.deid.deflated import DEFLATED, deflated_body, meta_end, with_transfer_syntax
from services.deid.engine import BASIC, RESEARCH, Profile
from services.deid.engine.deidentifier import deidentify_with_pydicom
from services.deid.files import deidentified, deidentify_file
from services.deid.handler import prepare_event
from services.deid.profile_documents import profile_from_document
from services.proto_gen.imx.v1 import events_pb2

from .builders import KEY, ct_dataset, every_attribute_dataset, to_bytes
from .stage_builders import routed_event

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]
TOPICS = Topics("t.")
PROFILE = profile_from_document({"name": "ai"}, version=1)
IDENTITY = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "modality",
    "patient_id",
)


def _ultrasound() -> Dataset:
    ds = ct_dataset()
    ds.Modality = "US"  # not the fast path's (burned-in text is the pydicom path's business)
    return ds


def _deflated_like_pydicom(explicit_output: bytes) -> bytes:
    """An explicit VR little endian output as pydicom writes it deflated (PS3.5 A.5)."""
    body = meta_end(explicit_output)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = compressor.compress(explicit_output[body:]) + compressor.flush()
    return with_transfer_syntax(explicit_output[:body], DEFLATED) + deflated + b"\x00" * (len(deflated) % 2)


@pytest.mark.parametrize("instance", [ct_dataset, every_attribute_dataset, _ultrasound], ids=["ct", "every", "us"])
@pytest.mark.parametrize("profile", [BASIC, RESEARCH], ids=["basic", "research"])
def test_a_deflated_instance_is_released_deflated_with_the_data_set_it_was_released_with_before(
    instance: Callable[[], Dataset], profile: Profile, tmp_path: Path
) -> None:
    data = to_bytes(instance(), DeflatedExplicitVRLittleEndian)
    before = deidentify_with_pydicom(data, profile, KEY)  # what deid released before: pydicom inflated it whole
    with deidentified(data, profile, KEY, tmp_path) as result:
        released = result.data
        assert [getattr(result, name) for name in IDENTITY] == [getattr(before, name) for name in IDENTITY]
    assert result.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    # The same file meta and data set, element for element (pydicom wrote sequences with defined
    # lengths, the raw path keeps the engine's encoding: the bytes of those lengths may differ) ...
    old, new = dcmread(BytesIO(before.data)), dcmread(BytesIO(released))
    assert new.file_meta == old.file_meta and new == old
    # ... and byte for byte what the pydicom path gives for the same data set in explicit VR little
    # endian, deflated as pydicom deflates.
    twin = deidentify_with_pydicom(to_bytes(instance(), ExplicitVRLittleEndian), profile, KEY)
    assert released == _deflated_like_pydicom(twin.data)
    assert not list(tmp_path.iterdir())


def test_imx_deid_writes_a_deflated_file_deflated(tmp_path: Path) -> None:
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(to_bytes(ct_dataset(), DeflatedExplicitVRLittleEndian))
    result = deidentify_file(source, target, BASIC, KEY)
    assert target.read_bytes() == result.data
    assert dcmread(target).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.dcm", "out.dcm"]


def _with_broken_stream(data: bytes) -> bytes:
    body = deflated_body(data)
    assert body is not None
    return data[:body] + b"\xff" * 16 + data[body + 16 :]  # block type 3 does not exist (RFC 1951 3.2.3)


@pytest.mark.parametrize(
    ("damage", "limit", "detail"),
    [
        (_with_broken_stream, 1024**3, "broken deflate stream"),
        (lambda data: data, 1024, "deflated data set inflates past 1024 bytes"),
    ],
    ids=["broken-stream", "over-the-limit"],
)
def test_a_deflated_instance_that_cannot_be_inflated_is_quarantined_with_a_reason(
    damage: Callable[[bytes], bytes], limit: int, detail: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    good = to_bytes(ct_dataset(), DeflatedExplicitVRLittleEndian)
    routed = routed_event(blobs, good, "ai")
    bad = damage(good)
    routed.blob.sha256, routed.blob.size = blobs.put(bad), len(bad)

    [out] = prepare_event(
        routed,
        lambda _n, _v: PROFILE,
        lambda _p: KEY,
        blobs,
        TOPICS,
        scratch=tmp_path / "blobs",
        max_inflated_bytes=limit,
    )

    assert out.topic == TOPICS.quarantine
    event = events_pb2.Quarantined.FromString(out.value)
    assert (event.stage, event.reason, event.detail) == ("deid", "not-deidentifiable", detail)
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))


def deflated_instance(pixel_bytes: int) -> bytes:
    """A CT whose zero pixel data make its data set inflate to `pixel_bytes` and more, deflated a MiB
    at a time, so that it is never whole in this process either."""
    ds = ct_dataset()
    ds.Rows, ds.Columns = 4096, pixel_bytes // (4096 * 2)
    del ds.PixelData
    explicit = to_bytes(ds)
    header = meta_end(explicit)
    meta = to_bytes(ds, DeflatedExplicitVRLittleEndian)
    body = meta_end(meta)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [meta[:body], compressor.compress(explicit[header:])]
    parts.append(compressor.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, ds.Rows * ds.Columns * 2)))
    zeros = bytes(MIB)
    for _ in range(ds.Rows * ds.Columns * 2 // MIB):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    data = b"".join(parts)
    return data + b"\x00" * (len(data) % 2)


# Run in a child, so its peak resident memory (ru_maxrss, KiB on Linux) is this work's alone: the
# baseline is taken after a small deflated instance went the same way (imports, caches, buffers), and
# the peak reset there (/proc/self/clear_refs "5", Linux 4.0+), so a higher one during imports hides
# nothing.
_CHILD = """
import json, os, resource, sys
from pathlib import Path
from services.common.blob_store import LocalBlobStore
from services.common.topics import Topics
from services.deid.handler import prepare_event
from services.deid.profile_documents import profile_from_document
from services.proto_gen.imx.v1 import events_pb2

blob_dir = Path(sys.argv[1])
blobs, topics = LocalBlobStore(blob_dir), Topics("t.")
profile = profile_from_document({"name": "ai"}, version=1)

def run(hex_event):
    routed = events_pb2.InstanceRouted.FromString(bytes.fromhex(hex_event))
    [out] = prepare_event(routed, lambda _n, _v: profile, lambda _p: bytes.fromhex(sys.argv[4]), blobs, topics,
                          scratch=blob_dir)
    return out

def held():  # open files and mappings of anything in the blob folder, temporary files included
    names = [line.split(None, 5)[-1] for line in open("/proc/self/maps")]
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return sorted(name for name in names if str(blob_dir) in name)

run(sys.argv[2])
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak so far (imports' included) is forgotten: ru_maxrss restarts from here
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = run(sys.argv[3])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepared = events_pb2.InstancePrepared.FromString(out.value)
print(json.dumps({"topic": out.topic, "syntax": prepared.instance.transfer_syntax_uid, "sha": prepared.blob.sha256,
                  "baseline_kib": baseline, "increase_kib": peak - baseline, "held": held()}))
"""


def test_a_large_deflated_instance_is_de_identified_in_bounded_memory_and_leaves_no_file(tmp_path: Path) -> None:
    inflated = 64 * MIB
    blobs = LocalBlobStore(tmp_path / "blobs")
    small = to_bytes(ct_dataset(), DeflatedExplicitVRLittleEndian)
    warm_up = routed_event(blobs, small, "ai", event="small")
    large = routed_event(blobs, small, "ai", event="large")  # the same identity: the header is the same
    data = deflated_instance(inflated)
    large.blob.sha256, large.blob.size = blobs.put(data), len(data)
    stored = sorted(blobs.root.rglob("*"))

    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(blobs.root), warm_up.SerializeToString().hex(),
         large.SerializeToString().hex(), KEY.hex()],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert child.returncode == 0, child.stderr[-2000:]
    report = json.loads(child.stdout.splitlines()[-1])
    assert (report["topic"], report["syntax"]) == (TOPICS.prepared, DeflatedExplicitVRLittleEndian)
    increase = report["increase_kib"] * 1024  # 263 MiB when pydicom inflated it whole, ~2 MiB since
    assert increase < 32 * MIB, f"a {inflated // MIB} MiB deflated instance took {increase // MIB} MiB more"
    assert report["held"] == [], "a temporary file is still open or mapped"
    added = [p for p in set(blobs.root.rglob("*")) - set(stored) if p.is_file()]
    assert all(p == blobs.path_for(p.name) for p in added), "only stored objects (the two outputs) were added"
    assert len(added) == 2 and blobs.path_for(report["sha"]) in added
    with blobs.open(report["sha"]) as released:
        ds = dcmread(released, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian and ds.Rows * ds.Columns * 2 == inflated

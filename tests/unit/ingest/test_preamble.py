"""CVE-2019-11687: a Part 10 preamble can hold an executable's header, so that the file is also an ELF
or PE program. Ingest stores (and so everyone downstream receives) the file with a zero preamble."""

from __future__ import annotations

import struct
from pathlib import Path

from services.common.blob_store import LocalBlobStore, sha256_hex
from services.common.dicom.part10 import zero_preamble
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance, Accepted
from services.ingest.receipts import MemoryReceiptStore
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import NOT_DICOM, RecordingBus, mr_study

TOPICS = Topics("t-")


def elf_preamble() -> bytes:
    """The first 64 bytes of an x86-64 ELF executable's header, padded to 128."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, System V
    fields = struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x401000, 64, 0, 0, 64, 56, 1, 64, 0, 0)  # ET_EXEC, x86-64
    header = ident + fields
    return header.ljust(128, b"\x90")


def test_an_elf_preamble_is_stored_as_zeros_and_the_rest_byte_for_byte(tmp_path: Path) -> None:
    original = mr_study(1)[0]
    hostile = elf_preamble() + original[128:]
    bus = RecordingBus()
    blobs = LocalBlobStore(tmp_path / "blobs")
    acceptance = Acceptance(
        blobs=blobs, receipts=MemoryReceiptStore(), bus=bus, topics=TOPICS, max_instance_bytes=10_000_000
    )

    result = acceptance.accept(hostile, "trust-a", "stow-rs")

    assert isinstance(result, Accepted)
    stored = blobs.get(result.sha256)
    assert stored[:128] == bytes(128)
    assert stored[128:] == hostile[128:]
    [message] = bus.on(TOPICS.ingested)
    event = events_pb2.InstanceIngested.FromString(message.value)
    assert (event.blob.sha256, event.blob.size) == (sha256_hex(stored), len(hostile))


def test_zero_preamble_leaves_zero_preambles_and_non_part10_bytes_alone() -> None:
    plain = mr_study(1)[0]
    assert plain[:128] == bytes(128)
    assert zero_preamble(plain) is plain
    assert zero_preamble(NOT_DICOM) is NOT_DICOM
    assert zero_preamble(b"\x7fELF" + bytes(200)) == b"\x7fELF" + bytes(200)

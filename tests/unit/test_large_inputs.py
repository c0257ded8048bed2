"""Instances handled as files, never whole in memory: the blob store's put_file / put_chunks / open,
the header read through a memory map, acceptance of a file handed over by a channel, and the deid
stage reading a large blob through a map."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from services.common.blob_store import BlobCorrupt, BlobNotFound, LocalBlobStore, sha256_hex, windows
from services.common.dicom.header import InvalidInstance, inspect_instance
from services.common.dicom.part10 import zero_preamble_file
from services.common.topics import Topics
from services.deid.engine import BUILTIN_PROFILES, deidentify
from services.deid.files import blob_source, deidentify_file
from services.ingest.acceptance import Acceptance, Accepted, Rejected
from services.ingest.receipts import MemoryReceiptStore
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.deid.builders import ct_dataset, to_bytes
from tests.unit.ingest.samples import NOT_DICOM, RecordingBus, mr_study

KEY = bytes(range(32))


def test_put_file_moves_the_file_in_and_answers_its_hash(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    source = tmp_path / "blobs" / ".tmp-received"
    source.write_bytes(b"received bytes" * 1000)
    digest = store.put_file(source)
    assert digest == sha256_hex(b"received bytes" * 1000)
    assert store.get(digest) == b"received bytes" * 1000
    assert not source.exists(), "consumed"


def test_put_file_of_content_already_stored_only_removes_the_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store.put(b"same")
    source = tmp_path / "again"
    source.write_bytes(b"same")
    assert store.put_file(source) == digest and not source.exists()


def test_put_chunks_stores_the_concatenation_hashed_as_written(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    chunks = (b"header", memoryview(b"0123456789" * 100_000)[5:])
    digest, size = store.put_chunks(chunks)
    whole = b"header" + (b"0123456789" * 100_000)[5:]
    assert (digest, size) == (sha256_hex(whole), len(whole))
    assert store.get(digest) == whole
    assert not list(tmp_path.rglob(".tmp-*"))


def test_open_checks_the_hash_and_returns_the_file_at_its_start(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store.put(b"object")
    with store.open(digest) as file:
        assert file.read() == b"object"
    store.path_for(digest).write_bytes(b"tampered")
    with pytest.raises(BlobCorrupt):
        store.open(digest)
    with pytest.raises(BlobNotFound):
        store.open("0" * 64)


def test_windows_cut_large_chunks_without_copying_them(tmp_path: Path) -> None:
    path = tmp_path / "mapped"
    path.write_bytes(bytes(range(256)) * 1000)
    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    pieces = list(windows((b"ab", memoryview(mapped)[6:]), size=10_000))
    assert [len(p) for p in pieces] == [2, *[10_000] * 25, 255_994 - 250_000]
    assert b"".join(bytes(p) for p in pieces) == b"ab" + (bytes(range(256)) * 1000)[6:]
    del pieces
    mapped.close()


def test_the_header_is_read_through_a_memory_map(tmp_path: Path) -> None:
    data = mr_study(1)[0]
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert inspect_instance(mapped, len(data) + 1) == inspect_instance(data, len(data) + 1)
    path.write_bytes(data[:-10])  # cut short inside the pixel data
    with (
        path.open("rb") as file,
        mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        pytest.raises(InvalidInstance) as cut,
    ):
        inspect_instance(mapped, len(data))
    assert cut.value.reason == "truncated"


def test_zero_preamble_file_zeroes_only_the_preamble(tmp_path: Path) -> None:
    data = mr_study(1)[0]
    path = tmp_path / "instance.dcm"
    path.write_bytes(b"\x7fELF".ljust(128, b"\x90") + data[128:])
    zero_preamble_file(path)
    assert path.read_bytes() == bytes(128) + data[128:]
    other = tmp_path / "not-dicom"
    other.write_bytes(NOT_DICOM)
    zero_preamble_file(other)
    assert other.read_bytes() == NOT_DICOM


def _acceptance(store: LocalBlobStore, bus: RecordingBus) -> Acceptance:
    return Acceptance(
        blobs=store,
        receipts=MemoryReceiptStore(),
        bus=bus,
        topics=Topics("t-"),
        max_instance_bytes=10_000_000,
        clock=lambda: 1_700_000_000_000,
    )


def test_a_file_handed_over_is_accepted_like_its_bytes_and_moved_into_the_store(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = mr_study(1)[0]
    received = tmp_path / "blobs" / ".tmp-c-store-1.dcm"
    received.write_bytes(b"\x01" * 128 + data[128:])
    bus = RecordingBus()
    result = _acceptance(store, bus).accept_file(received, "trust-a", "c-store")
    assert isinstance(result, Accepted)
    assert store.get(result.sha256) == bytes(128) + data[128:]
    assert not received.exists()
    [message] = bus.on(Topics("t-").ingested)
    event = events_pb2.InstanceIngested.FromString(message.value)
    assert event.blob.size == len(data) and event.blob.sha256 == result.sha256


def test_a_file_that_is_not_dicom_is_quarantined_and_stored_for_a_look(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    received = tmp_path / "upload"
    received.write_bytes(NOT_DICOM)
    result = _acceptance(store, RecordingBus()).accept_file(received, "trust-a", "c-store")
    assert isinstance(result, Rejected) and result.reason == "not-dicom" and result.quarantined
    assert store.exists(sha256_hex(NOT_DICOM))


def test_deid_reads_a_large_blob_through_a_map_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(tmp_path)
    data = to_bytes(ct_dataset())
    blob = events_pb2.BlobRef(sha256=store.put(data), size=len(data))
    monkeypatch.setattr("services.deid.files.MAPPED_FROM_BYTES", 1)
    profile = BUILTIN_PROFILES["basic"]
    with blob_source(store, blob) as source:
        assert isinstance(source, mmap.mmap)
        result = deidentify(source, profile, KEY)
        digest, size = store.put_chunks(result.chunks)
    expected = deidentify(data, profile, KEY).data
    assert (digest, size) == (sha256_hex(expected), len(expected))
    target = tmp_path / "out.dcm"
    deidentify_file(store.path_for(blob.sha256), target, profile, KEY)
    assert target.read_bytes() == expected
    assert os.stat(target).st_size == len(expected)

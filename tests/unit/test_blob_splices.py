"""Spliced objects (services/common/blob_splices.py): stored as a head and a reference to the end of
another stored object, read through the same store API as any object, with the same SHA-256 and size;
a source gone or changed makes the object corrupt, never other bytes; the lifecycle keeps sources."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from services.common.blob_lifecycle import collect, scan, usage
from services.common.blob_store import BlobCorrupt, BlobNotFound, LocalBlobStore
from services.common.http_server import ZERO_COPY_SEND
from services.deid.batch_writes import BatchedBlobWrites
from services.delivery.dicomweb_media import FilePart, multipart_body, single_body
from services.delivery.object_response import ObjectResponse

SOURCE = bytes(range(256)) * 400  # 102,400 bytes
OFFSET = 3000
HEAD = b"new header " * 50
WHOLE = HEAD + SOURCE[OFFSET:]
DAY = 24 * 3600.0


def _spliced(tmp_path: Path) -> tuple[LocalBlobStore, str, str]:
    store = LocalBlobStore(tmp_path)
    source = store.put(SOURCE)
    sha, size = store.put_spliced(HEAD, memoryview(SOURCE)[OFFSET:], source, OFFSET)
    assert (sha, size) == (hashlib.sha256(WHOLE).hexdigest(), len(WHOLE))
    return store, source, sha


def test_a_spliced_object_reads_as_its_whole_bytes_through_every_call(tmp_path: Path) -> None:
    store, source, sha = _spliced(tmp_path)

    assert not store.path_for(sha).exists(), "the tail is not written again"
    assert store.splice_path_for(sha).stat().st_size < len(HEAD) + 200
    assert store.exists(sha)
    assert store.get(sha) == WHOLE and store.get(sha, len(WHOLE)) == WHOLE
    for size in (None, len(WHOLE)):
        with store.open(sha, size) as file:
            assert file.read() == WHOLE
            file.seek(len(HEAD) - 5)
            assert file.read(10) == WHOLE[len(HEAD) - 5 : len(HEAD) + 5]
            assert file.seek(0, os.SEEK_END) == len(WHOLE)
    assert store.verify(sha)
    extent = store.extent(sha)
    assert (extent.head, extent.path, extent.offset, extent.size) == (HEAD, store.path_for(source), OFFSET, len(WHOLE))
    plain = store.extent(source)
    assert (plain.head, plain.offset, plain.size) == (b"", 0, len(SOURCE))
    with pytest.raises(BlobCorrupt):
        store.get(sha, len(WHOLE) + 1)


def test_a_replay_refreshes_the_record_and_its_source(tmp_path: Path) -> None:
    store, source, sha = _spliced(tmp_path)
    for path in (store.path_for(source), store.splice_path_for(sha)):
        os.utime(path, (1, 1))

    assert store.put_spliced(HEAD, memoryview(SOURCE)[OFFSET:], source, OFFSET) == (sha, len(WHOLE))
    assert store.path_for(source).stat().st_mtime > 1
    assert store.splice_path_for(sha).stat().st_mtime > 1
    assert not list(tmp_path.rglob(".tmp-*"))


def test_without_a_matching_source_the_object_is_written_whole(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    source = store.put(SOURCE + b"more")  # the tail given is not its end
    sha, _ = store.put_spliced(HEAD, memoryview(SOURCE)[OFFSET:], source, OFFSET)
    assert store.path_for(sha).read_bytes() == WHOLE and not store.splice_path_for(sha).exists()

    missing = "0" * 64
    other = store.put_spliced(b"h", memoryview(SOURCE)[OFFSET:], missing, OFFSET)[0]
    assert store.path_for(other).exists() and not store.splice_path_for(other).exists()


@pytest.mark.parametrize("damage", ["gone", "same-size", "truncated"])
def test_a_missing_or_altered_source_makes_the_object_corrupt(tmp_path: Path, damage: str) -> None:
    store, source, sha = _spliced(tmp_path)
    path = store.path_for(source)
    if damage == "gone":
        path.unlink()
    elif damage == "same-size":
        path.write_bytes(SOURCE[:-1] + b"X")
    else:
        path.write_bytes(SOURCE[:-1])

    with pytest.raises(BlobCorrupt):
        store.get(sha)
    with pytest.raises(BlobCorrupt):
        store.open(sha).close()
    assert not store.verify(sha)
    if damage != "same-size":  # only a rehash tells a same-size change, as for a plain object
        with pytest.raises(BlobCorrupt):
            store.get(sha, len(WHOLE))
        with pytest.raises(BlobCorrupt):
            store.extent(sha)


def test_a_missing_object_is_not_found_and_a_damaged_record_corrupt(tmp_path: Path) -> None:
    store, _source, sha = _spliced(tmp_path)
    with pytest.raises(BlobNotFound):
        store.get("1" * 64)
    with pytest.raises(BlobNotFound):
        store.extent("1" * 64)
    with pytest.raises(FileNotFoundError):
        store.verify("1" * 64)
    store.splice_path_for(sha).write_bytes(b"garbage")
    with pytest.raises(BlobCorrupt):
        store.get(sha)
    assert not store.verify(sha)
    (entry,) = (entry for entry in scan(tmp_path) if entry.source)
    assert entry.logical_size == entry.size == len(b"garbage"), "a scrub reads only the record"


def test_verify_checks_the_stored_form_it_is_asked_for(tmp_path: Path) -> None:
    store, source, sha = _spliced(tmp_path)
    assert store.verify(sha, spliced=True)
    with pytest.raises(FileNotFoundError):
        store.verify(sha, spliced=False)
    with pytest.raises(FileNotFoundError):
        store.verify(source, spliced=True)

    store.path_for(sha).write_bytes(WHOLE[:-1] + b"X")  # a damaged copy written whole beside the record
    assert not store.verify(sha) and not store.verify(sha, spliced=False), "reads use the whole one"
    assert store.verify(sha, spliced=True)


def test_batched_splices_appear_only_when_settled(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    source = store.put(SOURCE)
    writes = BatchedBlobWrites(store)
    sha, size = writes.put_spliced(HEAD, memoryview(SOURCE)[OFFSET:], source, OFFSET)

    assert writes.pending == 1 and not store.exists(sha)
    writes.settle()
    assert store.get(sha, size) == WHOLE and store.splice_path_for(sha).exists()
    assert writes.put_spliced(HEAD, memoryview(SOURCE)[OFFSET:], source, OFFSET) == (sha, size)
    assert writes.pending == 0, "stored already: refreshed, not written again"
    assert not list(tmp_path.rglob(".tmp-*"))


def _sent(response: ObjectResponse, zero_copy: bool) -> bytes:
    """What the server puts on the wire for `response`: sendfile's ranges read from their files."""
    body = bytearray()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == ZERO_COPY_SEND:
            body.extend(os.pread(message["file"].fileno(), message["count"], message["offset"]))
        elif message["type"] == "http.response.body":
            body.extend(message["body"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    scope = {"type": "http", "extensions": {ZERO_COPY_SEND: {}} if zero_copy else {}}
    asyncio.run(response(scope, receive, send))
    return bytes(body)


@pytest.mark.parametrize("zero_copy", [True, False])
def test_delivery_sends_the_head_then_the_source_range(tmp_path: Path, zero_copy: bool) -> None:
    store, _source, sha = _spliced(tmp_path)
    assert _sent(ObjectResponse(store.extent(sha), len(WHOLE), "application/dicom"), zero_copy) == WHOLE

    extent = store.extent(sha)
    part = FilePart(extent.path, extent.size, "1.2.840.10008.1.2.1", extent.head, extent.offset)
    assert b"".join(single_body(part, chunk_bytes=1000)) == WHOLE
    assert WHOLE in b"".join(multipart_body([part], "b0undary", chunk_bytes=777))
    with pytest.raises(OSError):
        ObjectResponse(extent, len(WHOLE) + 1, "application/dicom")
    store.path_for(extent.path.name).write_bytes(SOURCE[:-1])
    with pytest.raises(OSError):
        ObjectResponse(extent, len(WHOLE), "application/dicom")  # the source changed: answered 410


def test_the_lifecycle_keeps_a_source_while_an_object_refers_to_it(tmp_path: Path) -> None:
    store, source, sha = _spliced(tmp_path)
    now = store.path_for(source).stat().st_mtime + 30 * DAY
    os.utime(store.path_for(source), (now - 10 * DAY, now - 10 * DAY))

    entries = {entry.name: entry for entry in scan(tmp_path)}
    assert entries[sha + ".splice"].source == source and entries[source].source == ""
    figures = usage(entries.values(), set(), now, 7 * DAY)
    assert figures.objects == 2
    assert figures.bytes == len(SOURCE) + store.splice_path_for(sha).stat().st_size, "shared bytes counted once"

    os.utime(store.splice_path_for(sha), (now - 1 * DAY, now - 1 * DAY))
    kept = collect(tmp_path, set, 7 * DAY, clock=lambda: now)
    assert (kept.deleted, kept.kept_sources) == (0, 1)
    assert store.get(sha) == WHOLE

    os.utime(store.splice_path_for(sha), (now - 10 * DAY, now - 10 * DAY))
    owed = collect(tmp_path, lambda: {sha}, 7 * DAY, clock=lambda: now)
    assert (owed.deleted, owed.kept_owed, owed.kept_sources) == (0, 1, 1), "owed: its source stays too"

    gone = collect(tmp_path, set, 7 * DAY, clock=lambda: now)
    assert gone.deleted == 2, "the record, then the source no record refers to any more"
    assert not store.exists(sha) and not store.exists(source)

"""Input the decoder cannot read is quarantined by deid with a reason, never dead-lettered; a failing
blob store is not the input's fault and is left to the bus to retry."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

import pytest

from services.common.blob_store import BlobCorrupt, LocalBlobStore
from services.common.failures import Failure, classify
from services.common.topics import Topics
from services.deid.engine.deidentifier import deidentify
from services.deid.engine.errors import UndecodableInput
from services.deid.handler import prepare_event
from services.deid.profile_documents import profile_from_document
from services.proto_gen.imx.v1 import events_pb2

from .builders import KEY, ct_dataset, to_bytes
from .stage_builders import routed_event

TOPICS = Topics("t.")
PROFILE = profile_from_document({"name": "ai"}, version=1)


def _with_unknown_vr_in_modality(data: bytes) -> bytes:
    at = data.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality, explicit VR little endian
    return data[: at + 4] + b"ZZ" + data[at + 6 :]


def test_an_unknown_vr_in_modality_is_quarantined_with_a_reason_and_no_value(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    good = to_bytes(ct_dataset())
    routed = routed_event(blobs, good, "ai")
    routed.blob.sha256 = blobs.put(_with_unknown_vr_in_modality(good))

    [out] = prepare_event(routed, lambda _n, _v: PROFILE, lambda _p: KEY, blobs, TOPICS)

    assert out.topic == TOPICS.quarantine
    event = events_pb2.Quarantined.FromString(out.value)
    assert (event.stage, event.reason, event.detail) == ("deid", "undecodable-input", "NotImplementedError")
    assert event.partner_id == "research-a"


class FailingBlobs(LocalBlobStore):
    def get(self, sha256: str, size: int | None = None) -> bytes:
        raise OSError(errno.EIO, "Input/output error", "/var/blobs/xx")


def test_a_blob_store_failure_is_raised_for_the_bus_to_retry(tmp_path: Path) -> None:
    blobs = FailingBlobs(tmp_path)
    routed = routed_event(LocalBlobStore(tmp_path), to_bytes(ct_dataset()), "ai")
    with pytest.raises(OSError) as raised:
        prepare_event(routed, lambda _n, _v: PROFILE, lambda _p: KEY, blobs, TOPICS)
    assert classify(raised.value) is Failure.TRANSIENT


class FullDisk(LocalBlobStore):
    def put_chunks(self, chunks: Iterable[bytes | memoryview]) -> tuple[str, int]:
        raise OSError(errno.ENOSPC, "No space left on device", "/var/blobs/.tmp-x")


def test_a_failure_writing_the_output_is_raised_for_the_bus_to_retry(tmp_path: Path) -> None:
    blobs = FullDisk(tmp_path)
    routed = routed_event(blobs, to_bytes(ct_dataset()), "ai")
    with pytest.raises(OSError) as raised:
        prepare_event(routed, lambda _n, _v: PROFILE, lambda _p: KEY, blobs, TOPICS)
    assert classify(raised.value) is Failure.TRANSIENT


def test_an_input_blob_cut_short_is_refused_as_corrupt_not_de_identified(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    routed = routed_event(blobs, to_bytes(ct_dataset()), "ai")
    path = blobs.path_for(routed.blob.sha256)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(BlobCorrupt):
        prepare_event(routed, lambda _n, _v: PROFILE, lambda _p: KEY, blobs, TOPICS)


@pytest.mark.parametrize("vr", [b"ZZ", b"C\x00"])
def test_the_engine_names_an_unreadable_modality_as_undecodable_input_not_a_library_error(vr: bytes) -> None:
    # Modality is read only to report the result's identity, after every rule ran: that read must be
    # inside the engine's promise (DeidError only), as the damaged-input property test found.
    data = to_bytes(ct_dataset())
    at = data.index(b"\x08\x00\x60\x00CS")
    damaged = data[: at + 4] + vr + data[at + 6 :]

    with pytest.raises(UndecodableInput) as raised:
        deidentify(damaged, PROFILE, KEY)

    assert raised.value.detail == "NotImplementedError"

"""The deid stage with splicing on and off (IMX_DEID_SPLICE): the same events and the same object bytes;
on, a fast-path output is stored as a splice record of the stored input, and nothing else is (a
deflated input's pixel data are re-encoded, not the input's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.common.messages import IncomingMessage
from services.proto_gen.imx.v1 import events_pb2

from .test_stage_outputs import CASES, TOPICS, handler_for


def _run(name: str, root: Path, splice: bool) -> tuple[list[tuple[str, bytes, bytes]], LocalBlobStore]:
    case = CASES[name]
    blobs = LocalBlobStore(root)
    handle = handler_for(case, blobs, root, splice)
    messages = handle(IncomingMessage(TOPICS.routed, 0, 0, None, case.routed(blobs).SerializeToString()))
    handle.flush()
    return [(m.topic, m.headers["imx-event-type"], m.value) for m in messages], blobs


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("name", ["ct", "deflated", "pass-through", "undecodable"])
def test_splicing_changes_no_event_and_no_byte(name: str, mapped: bool, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if mapped:
        monkeypatch.setattr("services.deid.files.MAPPED_FROM_BYTES", 1)
    whole, whole_blobs = _run(name, tmp_path / "off", splice=False)
    spliced, spliced_blobs = _run(name, tmp_path / "on", splice=True)

    assert spliced == whole
    records = list((tmp_path / "on").rglob("*.splice"))
    assert not list((tmp_path / "off").rglob("*.splice"))
    for _topic, kind, value in whole:
        if kind != b"InstancePrepared":
            continue
        prepared = events_pb2.InstancePrepared.FromString(value)
        if prepared.deidentified:
            sha, size = prepared.blob.sha256, prepared.blob.size
            assert spliced_blobs.get(sha) == whole_blobs.get(sha) and len(whole_blobs.get(sha)) == size
            assert spliced_blobs.verify(sha)
            assert records == ([spliced_blobs.splice_path_for(sha)] if name == "ct" else [])
    assert not list(tmp_path.rglob(".tmp-*"))

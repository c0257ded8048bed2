"""A care transfer keeps the sender's UIDs, and ingest accepts them with leading zeros in a component
(some devices write them): the feed's references to such an instance must resolve. They were answered
400 "invalid UID in path", and the gateway dead-letters a 400 at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from services.common.blob_store import LocalBlobStore
from services.delivery.delivered import DeliveredInstance
from services.delivery.dicomweb import create_partner_app
from services.delivery.retrieval_refs import QUERY_PARAM, RetrievalRefs, SignedObject

STUDY, SERIES, SOP = "1.2.826.0.1.0345", "1.2.826.0.1.0345.1", "1.2.826.0.1.0345.1.01"
SYNTAX = "1.2.840.10008.1.2.1"
KEY = "partner-key"
REFS = RetrievalRefs(b"r" * 32)


class Delivered:
    def __init__(self, item: DeliveredInstance) -> None:
        self.item = item

    def instance(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> DeliveredInstance | None:
        return self.item if (partner_id, study_uid, series_uid, sop_uid) == ("lab", STUDY, SERIES, SOP) else None

    def study(self, partner_id: str, study_uid: str) -> list[DeliveredInstance]:
        return [self.item] if (partner_id, study_uid) == ("lab", STUDY) else []

    def series(self, partner_id: str, study_uid: str, series_uid: str) -> list[DeliveredInstance]:
        return self.study(partner_id, study_uid) if series_uid == SERIES else []

    def studies(self, partner_id: str, narrowed: object = None) -> Iterator[dict[str, object]]:
        return iter(())


def test_an_instance_whose_uids_have_leading_zeros_is_retrieved_by_reference_and_by_study(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    data = b"\0" * 128 + b"DICM" + b"x" * 1000
    sha256 = blobs.put(data)
    item = DeliveredInstance("lab", STUDY, SERIES, SOP, "1.2.840.10008.5.1.4.1.1.2", SYNTAX, sha256, len(data), "d1")
    known = {KEY: "lab"}
    app = create_partner_app(
        Delivered(item), known.get, blobs.extent, lambda _e: None, refs=REFS, cached_partner_for_key=known.get
    )
    client = TestClient(app)
    bearer = {"Authorization": f"Bearer {KEY}"}
    ref = REFS.token("lab", STUDY, SERIES, SOP, SignedObject(sha256, len(data), SYNTAX))
    signed = client.get(
        f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}?{QUERY_PARAM}={ref}", headers=bearer
    )
    assert signed.status_code == 200 and signed.content == data
    unsigned = client.get(f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}", headers=bearer)
    assert unsigned.status_code == 200 and data in unsigned.content
    assert client.get(f"/dicomweb/studies/{STUDY}", headers=bearer).status_code == 200
    # Still refused: what is not a UID at all.
    assert client.get(f"/dicomweb/studies/{STUDY}x", headers=bearer).status_code == 400

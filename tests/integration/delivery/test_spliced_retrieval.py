"""What a partner receives of a de-identified instance is byte for byte the same whether deid stored it
spliced (its new header and a reference to the ingest blob's pixel data, IMX_DEID_SPLICE=1) or whole
(=0): the partners' DICOMweb API over a real server (sendfile with offset and count), real FerretDB
and Kafka, for a single instance, a series in multipart, and metadata."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pymongo.database import Database

from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer, ensure_topics
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.deid.batch_writes import BatchedBlobWrites
from services.deid.engine.profile import BASIC
from services.deid.handler import Deidentify, Released, release_instance
from services.delivery.delivered import DeliveredInstance, DeliveredObjects
from services.delivery.dicomweb_wiring import start_partner_api
from services.delivery.settings import DeliverySettings
from services.proto_gen.imx.v1 import events_pb2

KEY = b"splice-test-key-0123456789abcdef"


def _deidentified(blobs: LocalBlobStore, splice: bool) -> list[Released]:
    writes = BatchedBlobWrites(blobs)
    released = []
    for ds in generate_study(31, "CT", 3, "src-splice"):
        data = dataset_to_bytes(ds)
        source = events_pb2.BlobRef(sha256=blobs.put(data), size=len(data))
        outcome = release_instance(writes, source, Deidentify(BASIC, KEY), splice=splice)
        assert isinstance(outcome, Released)
        released.append(outcome)
    writes.settle()
    return released


def _fetch_all(base: str, key: str, released: list[Released]) -> list[bytes]:
    headers = {"Authorization": f"Bearer {key}"}
    answers = []
    for item in released:
        i = item.instance
        url = f"{base}/studies/{i.study_instance_uid}/series/{i.series_instance_uid}"
        single = requests.get(f"{url}/instances/{i.sop_instance_uid}", headers=headers, timeout=30)
        assert single.status_code == 200
        answers.append(single.content)
    first = released[0].instance
    url = f"{base}/studies/{first.study_instance_uid}/series/{first.series_instance_uid}"
    series = requests.get(url, headers={**headers, "Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert series.status_code == 200
    metadata = requests.get(f"{url}/metadata", headers=headers, timeout=30)
    assert metadata.status_code == 200 and "7FE00010" not in metadata.text
    return [*answers, series.content.split(b"\r\n--")[0].split(b"\r\n\r\n", 1)[1], metadata.content]


@pytest.fixture
def served(db: Database, kafka_bootstrap: str, make_name, tmp_path: Path) -> Iterator[tuple[str, str, LocalBlobStore]]:  # type: ignore[no-untyped-def]
    topics = Topics(prefix=make_name("spliced") + ".")
    ensure_topics(kafka_bootstrap, [topics.access], partitions=1)
    blobs = LocalBlobStore(tmp_path / "blobs")
    partners = PartnerStore(db)
    partners.add(Partner("splice-partner"))
    key = partners.issue_dicomweb_key("splice-partner")
    producer = BusProducer(kafka_bootstrap, client_id="t-spliced")
    settings = DeliverySettings(http_host="127.0.0.1", http_port=0, kafka_bootstrap=kafka_bootstrap)
    server = start_partner_api(settings, db, blobs, producer, topics)
    try:
        yield f"http://127.0.0.1:{server.port}/dicomweb", key, blobs
    finally:
        server.stop()
        producer.close()


def _record(db: Database, released: list[Released]) -> None:
    DeliveredObjects(db).record(
        DeliveredInstance(
            partner_id="splice-partner",
            study_uid=r.instance.study_instance_uid,
            series_uid=r.instance.series_instance_uid,
            sop_uid=r.instance.sop_instance_uid,
            sop_class_uid=r.instance.sop_class_uid,
            transfer_syntax_uid=r.instance.transfer_syntax_uid,
            sha256=r.blob.sha256,
            size=r.blob.size,
            delivery_id=r.blob.sha256[:32],
            modality="CT",
            delivered_at_ms=int(time.time() * 1000),
        )
        for r in released
    )


def test_a_partner_receives_the_same_bytes_with_splicing_on_and_off(
    served: tuple[str, str, LocalBlobStore], db: Database
) -> None:
    base, key, blobs = served
    whole = _deidentified(blobs, splice=False)
    _record(db, whole)
    assert not list(blobs.root.rglob("*.splice"))
    before = _fetch_all(base, key, whole)

    for item in whole:  # the same objects again, stored spliced this time
        blobs.path_for(item.blob.sha256).unlink()
    spliced = _deidentified(blobs, splice=True)
    assert [(r.blob.sha256, r.blob.size) for r in spliced] == [(r.blob.sha256, r.blob.size) for r in whole]
    assert all(not blobs.path_for(r.blob.sha256).exists() for r in spliced)
    assert len(list(blobs.root.rglob("*.splice"))) == len(spliced)
    after = _fetch_all(base, key, spliced)

    assert after == before
    for item, body in zip(whole, after, strict=False):
        assert hashlib.sha256(body).hexdigest() == item.blob.sha256

    # A range of a spliced object (its new header, then the received object's pixel data) is the same
    # slice of the same bytes, across the seam too.
    i, size = spliced[0].instance, spliced[0].blob.size
    url = f"{base}/studies/{i.study_instance_uid}/series/{i.series_instance_uid}/instances/{i.sop_instance_uid}"
    for asked, piece in (
        ("bytes=1-", slice(1, None)),
        ("bytes=100-5000", slice(100, 5001)),
        (f"bytes=-{size - 7}", slice(7, None)),
    ):
        part = requests.get(url, headers={"Authorization": f"Bearer {key}", "Range": asked}, timeout=30)
        assert part.status_code == 206 and part.content == after[0][piece]

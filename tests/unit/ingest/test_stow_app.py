"""The STOW-RS HTTP surface over the real acceptance core with in-memory collaborators."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from services.common.blob_store import LocalBlobStore
from services.common.dicom.header import inspect_instance
from services.common.dicom.part10 import dataset_to_bytes
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance
from services.ingest.multipart_related import SpillFile
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.stow import StowContext, create_app, stow_spill_files
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import NOT_DICOM, RecordingBus, mr_study, multipart_body, stow_content_type

TOPICS = Topics("t-")
KEY = "imx_test-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": stow_content_type()}


class ApiKeys:
    def org_for_api_key(self, api_key: str) -> str | None:
        return "trust-a" if api_key == KEY else None


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


def _client(tmp_path: Path, bus: RecordingBus, max_parts: int = 10_000) -> TestClient:
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path),
        receipts=MemoryReceiptStore(),
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=400_000,
    )
    return TestClient(create_app(StowContext(acceptance, ApiKeys(), max_parts=max_parts)))


@pytest.fixture
def client(tmp_path: Path, bus: RecordingBus) -> TestClient:
    return _client(tmp_path, bus)


def referenced(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def test_all_stored_is_200_with_each_instance_referenced(client: TestClient, bus: RecordingBus) -> None:
    instances = mr_study(3, n=2)
    response = client.post(
        "/dicomweb/studies", content=multipart_body(instances), headers={**AUTH, "X-IMX-Destination": "research-1"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    refs = referenced(response.json(), "00081199")
    expected = [inspect_instance(i, 10**9).sop_instance_uid for i in instances]
    assert [r["00081155"]["Value"][0] for r in refs] == expected
    events = [events_pb2.InstanceIngested.FromString(m.value) for m in bus.on(TOPICS.ingested)]
    assert {(e.channel, e.source_org, e.requested_destination) for e in events} == {
        ("stow-rs", "trust-a", "research-1")
    }


def test_a_non_dicom_part_fails_alone_with_202(client: TestClient, bus: RecordingBus) -> None:
    response = client.post("/dicomweb/studies", content=multipart_body([mr_study(3)[0], NOT_DICOM]), headers=AUTH)

    assert response.status_code == 202
    body = response.json()
    assert len(referenced(body, "00081199")) == 1
    [failed] = referenced(body, "00081198")
    assert failed["00081197"]["Value"] == [0xC000]
    assert events_pb2.Quarantined.FromString(bus.on(TOPICS.quarantine)[0].value).reason == "not-dicom"


def test_nothing_stored_is_409(client: TestClient) -> None:
    response = client.post("/dicomweb/studies", content=multipart_body([NOT_DICOM]), headers=AUTH)
    assert response.status_code == 409
    assert "00081199" not in response.json()


def test_an_instance_of_another_study_fails_with_a900(client: TestClient, bus: RecordingBus) -> None:
    mine, other = mr_study(3)[0], mr_study(4)[0]
    study = inspect_instance(mine, 10**9).study_instance_uid

    response = client.post(f"/dicomweb/studies/{study}", content=multipart_body([mine, other]), headers=AUTH)

    assert response.status_code == 202
    [failed] = referenced(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [0xA900]
    assert failed["00081155"]["Value"] == [inspect_instance(other, 10**9).sop_instance_uid]
    assert len(bus.on(TOPICS.ingested)) == 1


def test_a_part_over_the_size_limit_fails_with_out_of_resources(client: TestClient) -> None:
    response = client.post("/dicomweb/studies", content=multipart_body([b"\0" * 500_000]), headers=AUTH)
    assert response.status_code == 409
    assert referenced(response.json(), "00081198")[0]["00081197"]["Value"] == [0xA701]


def test_kafka_down_is_503_and_every_instance_out_of_resources(client: TestClient, bus: RecordingBus) -> None:
    bus.fail = 1
    response = client.post("/dicomweb/studies", content=multipart_body(list(mr_study(3, n=2))), headers=AUTH)
    assert response.status_code == 503
    assert [f["00081197"]["Value"] for f in referenced(response.json(), "00081198")] == [[0xA700], [0xA700]]
    assert "Retry-After" in response.headers


def test_kafka_down_while_an_oversized_part_is_quarantined_is_503_not_500(
    client: TestClient, bus: RecordingBus
) -> None:
    """The oversized part's quarantine event could not be published: the request was a 500, and the
    outcome of the instance stored before it was lost."""
    good = mr_study(3, n=1)[0]
    bus.fail = 0
    response = client.post("/dicomweb/studies", content=multipart_body([good]), headers=AUTH)
    assert response.status_code == 200
    bus.fail = 1
    response = client.post("/dicomweb/studies", content=multipart_body([b"\0" * 500_000]), headers=AUTH)
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert [f["00081197"]["Value"] for f in referenced(response.json(), "00081198")] == [[0xA700]]


@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer wrong-key"])
def test_without_a_valid_api_key_is_401(client: TestClient, bus: RecordingBus, authorization: str | None) -> None:
    headers = {"Content-Type": stow_content_type()}
    if authorization:
        headers["Authorization"] = authorization
    response = client.post("/dicomweb/studies", content=multipart_body([mr_study(3)[0]]), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert not bus.messages


def test_other_content_types_are_415_with_a_clear_message(client: TestClient) -> None:
    response = client.post(
        "/dicomweb/studies", content=mr_study(3)[0], headers={**AUTH, "Content-Type": "application/dicom"}
    )
    assert response.status_code == 415
    assert "multipart/related" in response.json()["detail"]


def test_a_malformed_body_is_400(client: TestClient) -> None:
    response = client.post("/dicomweb/studies", content=b"--nope\r\n\r\nxyz", headers=AUTH)
    assert response.status_code == 400


def test_an_invalid_destination_is_400(client: TestClient) -> None:
    response = client.post(
        "/dicomweb/studies",
        content=multipart_body([mr_study(3)[0]]),
        headers={**AUTH, "X-IMX-Destination": "SMITH^ARJUN^R"},
    )
    assert response.status_code == 400
    assert "partner id must be" in response.text and "SMITH" not in response.text, "what was sent is not repeated"


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_more_instances_than_a_request_may_carry_is_413_after_the_first_are_handled(
    tmp_path: Path, bus: RecordingBus
) -> None:
    """The answer says how each of the first parts turned out: a client told only "send the rest" never
    learnt that one of the first was refused, and dropped it."""
    client = _client(tmp_path, bus, max_parts=2)
    parts = [NOT_DICOM, *mr_study(3, n=2)]
    response = client.post("/dicomweb/studies", content=multipart_body(parts), headers=AUTH)

    assert response.status_code == 413
    assert "at most 2 instances per request" in response.headers["warning"]
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert len(body["00081198"]["Value"]) == 1 and len(body["00081199"]["Value"]) == 1
    assert len(bus.on(TOPICS.ingested)) == 1


def test_a_large_instance_is_stored_from_a_file_and_no_part_file_is_left(tmp_path: Path, bus: RecordingBus) -> None:
    """A part over multipart_related.SPILL_OVER_BYTES is written to a file in the blob folder and moved
    into the store: held in memory, a part cost twice its size."""
    ds = dcmread(BytesIO(mr_study(3, n=1)[0]))
    ds.PixelData = bytes(9 * 1024 * 1024)
    large = dataset_to_bytes(ds)
    blobs = LocalBlobStore(tmp_path)
    acceptance = Acceptance(
        blobs=blobs, receipts=MemoryReceiptStore(), bus=bus, topics=TOPICS, max_instance_bytes=64 * 1024 * 1024
    )
    made: list[SpillFile] = []
    spill = stow_spill_files(tmp_path)

    def counted() -> SpillFile:
        made.append(spill())
        return made[-1]

    client = TestClient(create_app(StowContext(acceptance, ApiKeys(), spill=counted)))
    body = multipart_body([large, NOT_DICOM + bytes(9_000_000)])
    response = client.post("/dicomweb/studies", content=body, headers=AUTH)

    assert response.status_code == 202 and len(made) == 2
    [event] = [events_pb2.InstanceIngested.FromString(m.value) for m in bus.on(TOPICS.ingested)]
    assert event.blob.size == len(large) and blobs.get(event.blob.sha256) == large
    assert not [p for p in tmp_path.rglob(".tmp-*")], "every part's file moved into the store or removed"

"""STOW-RS over a real socket to the running service (uvicorn), with httpx and dicomweb-client."""

from __future__ import annotations

from io import BytesIO

import httpx
import pytest
from pydicom import dcmread

from services.common.dicom.header import inspect_instance
from tests.integration.ingest.conftest import SenderOrg
from tests.integration.ingest.helpers import RunningIngest, ingested_events, quarantined_events
from tests.unit.ingest.samples import NOT_DICOM, mr_study, multipart_body, stow_content_type


def _post(ingest: RunningIngest, body: bytes, api_key: str | None, path: str = "") -> httpx.Response:
    headers = {"Content-Type": stow_content_type(), "Accept": "application/dicom+json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.post(ingest.stow_url + path, content=body, headers=headers, timeout=60)


def _sop_uids(instances: tuple[bytes, ...]) -> set[str]:
    return {inspect_instance(d, 10**9).sop_instance_uid for d in instances}


def test_stow_stores_every_instance_and_answers_200(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str
) -> None:
    instances = mr_study(201, n=3)
    response = _post(ingest, multipart_body(instances), sender.api_key)

    assert response.status_code == 200
    refs = response.json()["00081199"]["Value"]
    assert {r["00081155"]["Value"][0] for r in refs} == _sop_uids(instances)
    events = [
        e
        for e in ingested_events(kafka_bootstrap, ingest.topics)
        if e.instance.sop_instance_uid in _sop_uids(instances)
    ]
    assert len(events) == 3 and {(e.channel, e.source_org) for e in events} == {("stow-rs", "trust-a")}


def test_stow_without_an_api_key_is_401(ingest: RunningIngest) -> None:
    assert _post(ingest, multipart_body(mr_study(202, n=1)), None).status_code == 401
    assert _post(ingest, multipart_body(mr_study(202, n=1)), "imx_not-a-key").status_code == 401


def test_a_non_dicom_part_fails_and_is_quarantined(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str
) -> None:
    mixed = _post(ingest, multipart_body([mr_study(203, n=1)[0], NOT_DICOM]), sender.api_key)
    only_bad = _post(ingest, multipart_body([NOT_DICOM + b"2"]), sender.api_key)

    assert mixed.status_code == 202
    assert mixed.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert only_bad.status_code == 409
    reasons = [(q.stage, q.reason, q.source_org) for q in quarantined_events(kafka_bootstrap, ingest.topics)]
    assert reasons.count(("ingest", "not-dicom", "trust-a")) >= 2


def test_the_same_instance_by_stow_and_c_store_style_resend_is_announced_once(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str
) -> None:
    instance = mr_study(204, n=1)
    assert _post(ingest, multipart_body(instance), sender.api_key).status_code == 200
    again = _post(ingest, multipart_body(instance), sender.api_key)
    assert again.status_code == 200  # already received: success, nothing published

    uid = next(iter(_sop_uids(instance)))
    assert len([e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid == uid]) == 1


def test_dicomweb_client_can_store(ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str) -> None:
    dicomweb_client = pytest.importorskip("dicomweb_client")
    requests = pytest.importorskip("requests")

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {sender.api_key}"
    client = dicomweb_client.DICOMwebClient(
        url=f"http://127.0.0.1:{ingest.endpoints.http_port}/dicomweb", session=session
    )
    instances = mr_study(205, n=2)
    result = client.store_instances([dcmread(BytesIO(d)) for d in instances])

    assert {item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence} == _sop_uids(instances)

"""Orthanc, with its DICOMweb plugin, as a partner's PACS pulling from imx's DICOMweb API: it finds
what was sent to it (QIDO-RS) and retrieves a whole study into its own storage (WADO-RS), signed in
with the partner's key; with another partner's key it finds nothing."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.delivery.test_dicomweb import Api, api  # noqa: F401  (the fixture)
from tools.dicom_peers import dicomweb_plugin, start_orthanc

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None or dicomweb_plugin() is None,
    reason="Orthanc and orthanc-dicomweb are installed by make setup",
)


def _servers(partner_api: Api) -> dict[str, object]:
    return {
        partner: {"Url": partner_api.base + "/", "HttpHeaders": {"Authorization": f"Bearer {key}"}}
        for partner, key in partner_api.keys.items()
    }


def test_orthanc_finds_and_retrieves_a_study_with_the_partners_key(api: Api, tmp_path: Path) -> None:  # noqa: F811
    orthanc = start_orthanc(tmp_path / "orthanc", extra={"DicomWeb": {"Enable": True, "Servers": _servers(api)}})
    try:
        study = api.study[0].item.study_uid
        found = httpx.post(f"{orthanc.rest}/dicom-web/servers/hosp-a/qido", json={"Uri": "/studies"}, timeout=30).json()
        # The plugin answers in Orthanc's own form: each tag with its value as a plain string.
        assert [s["0020000D"]["Value"] for s in found] == [study]
        theirs = httpx.post(
            f"{orthanc.rest}/dicom-web/servers/research-b/qido", json={"Uri": "/studies"}, timeout=30
        ).json()
        assert study not in str(theirs), "another partner's key finds only its own studies"

        retrieved = httpx.post(
            f"{orthanc.rest}/dicom-web/servers/hosp-a/retrieve",
            json={"Resources": [{"Study": study}]},
            timeout=60,
        )
        assert retrieved.status_code == 200, retrieved.text
        deadline = time.monotonic() + 30
        while orthanc.instance_count() < len(api.study) and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = httpx.get(f"{orthanc.rest}/instances", params={"expand": ""}, timeout=30).json()
        assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in stored) == sorted(s.item.sop_uid for s in api.study)
        for instance in stored:
            data = httpx.get(f"{orthanc.rest}/instances/{instance['ID']}/file", timeout=30).content
            expected = next(s for s in api.study if s.item.sop_uid == instance["MainDicomTags"]["SOPInstanceUID"])
            assert data[-4096:] == expected.data[-4096:], "pixel data as delivered"

        refused = httpx.post(
            f"{orthanc.rest}/dicom-web/servers/research-b/retrieve",
            json={"Resources": [{"Study": api.other[0].item.study_uid}, {"Study": study}]},
            timeout=60,
        )
        assert orthanc.instance_count() == len(api.study) + len(api.other), refused.text
    finally:
        orthanc.stop()

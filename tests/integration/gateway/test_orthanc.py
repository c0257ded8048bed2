"""The gateway into Orthanc (with its DICOMweb plugin) by C-STORE and by STOW-RS."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.conftest import Partner, gateway_thread
from tests.integration.gateway.peers import orthanc


@pytest.mark.parametrize("protocol", ["dicom", "dicomweb"])
def test_every_delivery_arrives_in_orthanc(partner: Partner, ct_study: list, tmp_path: Path, protocol: str) -> None:
    with orthanc(tmp_path) as pacs:
        target = f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}" if protocol == "dicom" else f"{pacs.http}/dicom-web"
        partner.publish(ct_study[:6], study_complete=True)
        with gateway_thread(partner.settings(target, idle_exit_s=2.0)) as (_stop, done):
            counters = done.result(timeout=60)
        assert pacs.sop_instance_uids() == {i.sop for i in ct_study[:6]}
    assert counters.stored == 6 and counters.studies_complete == 1
    receipts = partner.receipts(7)
    assert {r.target_kind for r in receipts} == {protocol}
    assert sum(r.status == events_pb2.STORE_STATUS_STORED for r in receipts) == 6

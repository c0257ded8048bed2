"""The service as a whole: gRPC admin and control, `imx send`, and a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from services.common.control_channel import control_channel
from services.common.dicom.header import inspect_instance
from services.ingest.errors import UnknownOrganisation
from services.ingest.sender import send_with_settings
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, control_pb2, control_pb2_grpc
from tests.integration.ingest.conftest import SenderOrg
from tests.integration.ingest.helpers import RunningIngest, ingested_events, make_settings, quarantined_events
from tests.unit.ingest.samples import NOT_DICOM, mr_study, mr_study_phi, multipart_body, stow_content_type
from tools.devstack import free_ports

REPO = Path(__file__).resolve().parents[3]


def test_organisation_admin_issues_a_key_that_stow_accepts(ingest: RunningIngest) -> None:
    with control_channel(f"127.0.0.1:{ingest.endpoints.grpc_port}") as channel:
        admin = admin_pb2_grpc.OrganisationAdminStub(channel)
        added = admin.AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(org_id="tele-rad", name="Tele Rad", ae_titles=["TELERAD"]),
                issue_api_key=True,
            )
        )
        assert added.api_key.startswith("imx_")
        listed = admin.ListOrganisations(admin_pb2.ListOrganisationsRequest())
        assert "tele-rad" in [o.org_id for o in listed.organisations]

        response = httpx.post(
            ingest.stow_url,
            content=multipart_body(mr_study(301, n=1)),
            timeout=60,
            headers={"Content-Type": stow_content_type(), "Authorization": f"Bearer {added.api_key}"},
        )
        assert response.status_code == 200

        with pytest.raises(grpc.RpcError) as invalid:
            admin.AddOrganisation(
                admin_pb2.AddOrganisationRequest(organisation=admin_pb2.Organisation(org_id="Bad Id"))
            )
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert admin.RemoveOrganisation(admin_pb2.RemoveOrganisationRequest(org_id="tele-rad")).removed
        with pytest.raises(grpc.RpcError) as missing:
            admin.RemoveOrganisation(admin_pb2.RemoveOrganisationRequest(org_id="tele-rad"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_organisations_calling_ae_title_is_bound_to_its_networks(ingest: RunningIngest) -> None:
    """Stored in MongoDB, read back by the running service at once (`imx orgs add --dicom-from`)."""

    def send() -> int:
        ae = AE(ae_title="SITEPACS")
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", ingest.endpoints.dicom_port, ae_title=ingest.endpoints.ae_title)
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(dcmread(BytesIO(mr_study(306, n=1)[0]))).Status)
        finally:
            assoc.release()

    with control_channel(f"127.0.0.1:{ingest.endpoints.grpc_port}") as channel:
        admin = admin_pb2_grpc.OrganisationAdminStub(channel)

        def add(*networks: str) -> admin_pb2.AddOrganisationReply:
            site = admin_pb2.Organisation(org_id="site", ae_titles=["SITEPACS"], dicom_from=networks)
            return admin.AddOrganisation(admin_pb2.AddOrganisationRequest(organisation=site))

        assert list(add("10.20.3.4/16").organisation.dicom_from) == ["10.20.0.0/16"]
        listed = admin.ListOrganisations(admin_pb2.ListOrganisationsRequest())
        assert [list(o.dicom_from) for o in listed.organisations if o.org_id == "site"] == [["10.20.0.0/16"]]
        assert send() == 0x0124, "127.0.0.1 is not the site's network"
        add("10.20.0.0/16", "127.0.0.1")
        assert send() == 0x0000
        with pytest.raises(grpc.RpcError) as invalid:
            add("10.20.0.0/33")
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a network" in str(
            invalid.value.details()
        )
        assert admin.RemoveOrganisation(admin_pb2.RemoveOrganisationRequest(org_id="site")).removed


def test_health_and_status_are_served(ingest: RunningIngest) -> None:
    with control_channel(f"127.0.0.1:{ingest.endpoints.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="imx.ingest"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        status = control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest())
        assert status.service == "ingest"


def test_send_a_folder_in_process(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str, tmp_path: Path
) -> None:
    instances = mr_study(302, n=3)
    for i, data in enumerate(instances):
        (tmp_path / "series" / f"{i}").mkdir(parents=True)
        (tmp_path / "series" / f"{i}" / "image.dcm").write_bytes(data)
    (tmp_path / "notes.txt").write_bytes(NOT_DICOM + b"sender")

    summary = send_with_settings([tmp_path], source_org=sender.org_id, settings=ingest.settings, to="research-1")

    assert (summary.sent, summary.accepted, summary.duplicates, dict(summary.rejected)) == (4, 3, 0, {"not-dicom": 1})
    wanted = {inspect_instance(d, 10**9).sop_instance_uid for d in instances}
    events = [e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid in wanted]
    assert {(e.channel, e.requested_destination) for e in events} == {("cli", "research-1")} and len(events) == 3
    assert any(q.reason == "not-dicom" for q in quarantined_events(kafka_bootstrap, ingest.topics))

    again = send_with_settings([tmp_path], source_org=sender.org_id, settings=ingest.settings, to="research-1")
    assert (again.accepted, again.duplicates) == (0, 3)


def test_send_from_an_unknown_organisation_is_refused(ingest: RunningIngest, tmp_path: Path) -> None:
    with pytest.raises(UnknownOrganisation):
        send_with_settings([tmp_path], source_org="nobody", settings=ingest.settings)


def _health(port: int) -> int | None:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return int(reply.status)
    except grpc.RpcError:
        return None


def test_sigterm_lets_an_open_association_finish_and_exits_0_and_logs_carry_no_phi(
    kafka_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from pymongo import MongoClient

    from services.common.stores.organisations import Organisation, OrganisationStore

    settings = make_settings(kafka_bootstrap, mongo_uri, tmp_path_factory)
    client: MongoClient = MongoClient(mongo_uri)
    key = OrganisationStore(client[settings.mongo_db]).add(Organisation("trust-z", ae_titles=("ZPACS",)), True)
    client.close()
    dicom_port, http_port, grpc_port = free_ports(3)
    env = {
        **os.environ,
        "IMX_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "IMX_MONGO_URI": mongo_uri,
        "IMX_MONGO_DB": settings.mongo_db,
        "IMX_TOPIC_PREFIX": settings.topic_prefix,
        "IMX_BLOB_DIR": str(tmp_path / "blobs"),
        "IMX_DICOM_PORT": str(dicom_port),
        "IMX_HTTP_PORT": str(http_port),
        "IMX_GRPC_PORT": str(grpc_port),
        "IMX_SHUTDOWN_GRACE_S": "10",
        "IMX_LOG_LEVEL": "DEBUG",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while _health(grpc_port) != health_pb2.HealthCheckResponse.SERVING:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "ingest did not become ready"
            time.sleep(0.2)
        ae = AE(ae_title="ZPACS")
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="IMX")
        assert assoc.is_established
        first = tmp_path / "first.dcm"
        first.write_bytes(mr_study(304, n=1)[0])
        assert assoc.send_c_store(dcmread(first)).Status == 0x0000
        # A broken upload (the header without its pixel data) is quarantined and logged, without values.
        truncated = mr_study(305, n=1)[0][:-1000]
        stow = httpx.post(
            f"http://127.0.0.1:{http_port}/dicomweb/studies",
            content=multipart_body([truncated]),
            headers={"Content-Type": stow_content_type(), "Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert stow.status_code == 409

        proc.send_signal(signal.SIGTERM)
        while _health(grpc_port) == health_pb2.HealthCheckResponse.SERVING:
            time.sleep(0.05)
        # Stopping: no new associations, but the open one is still served.
        path = tmp_path / "late.dcm"
        path.write_bytes(mr_study(303, n=1)[0])
        assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        assoc.release()

        assert proc.wait(timeout=30) == 0
        logs = proc.stderr.read().decode() if proc.stderr else ""
        assert "service stopped" in logs
        leaked = {v for v in mr_study_phi(303, n=1) | mr_study_phi(304, n=1) if v in logs}
        assert not leaked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""Central gateways: a partner registered with an endpoint receives without running anything itself.

The central gateway service (`python -m services.gateway.central`, what `imx serve gateways` runs)
runs beside the stack; the partner is added at run time with a file:// endpoint, and its instances
arrive in that folder. Resetting the partner's own DICOMweb key does not stop the central gateway
(its key is of another kind); removing the partner stops its worker. With two partners' PACS
(dcmtk storescp), one PACS down holds up nothing of the other's, and its backlog arrives when it
returns (issue 7 item 8)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from services.common.control_channel import control_channel
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc
from tests.e2e.stack import ROOT, Stack
from tests.e2e.test_cli import imx
from tools.devstack import free_ports, start_process
from tools.dicom_peers import start_storescp
from tools.services_stack import wait_serving


@pytest.fixture
def central(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """The central gateway service against the stack; yields its gRPC address."""
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "IMX_KAFKA_BOOTSTRAP": stack.kafka,
        "IMX_MONGO_URI": stack.mongo,
        "IMX_MONGO_DB": stack.db,
        "IMX_TOPIC_PREFIX": stack.prefix,
        "IMX_GRPC_PORT": str(port),
        "IMX_GATEWAY_STATE_DIR": str(tmp_path / "central-state"),
        "IMX_GATEWAY_REFRESH_S": "1",
        "IMX_GATEWAY_RESTART_S": "1",
        "IMX_GATEWAY_BACKOFF_CAP_S": "2",  # a PACS back up is found again within 2 s
    }
    proc = start_process(
        "gateways",
        [sys.executable, "-m", "services.gateway.central"],
        tmp_path / "gateways.log",
        env=env,
        cwd=ROOT,
        die_with_parent=True,
    )
    try:
        assert wait_serving(f"127.0.0.1:{port}", 60), proc.log_tail()
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop(timeout=30)


def _write_study(folder: Path, seed: int, count: int = 4) -> str:
    folder.mkdir(parents=True)
    datasets = list(study_instances(plan_study(seed, "CT", count, "RYB02")))
    for ds in datasets:
        (folder / f"{ds.SeriesNumber:02d}{ds.InstanceNumber:03d}.dcm").write_bytes(dataset_to_bytes(ds))
    return str(datasets[0].StudyInstanceUID)


def _wait_for_files(folder: Path, count: int, timeout_s: float = 90) -> list[Path]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = sorted(folder.rglob("*.dcm")) if folder.exists() else []
        if len(files) >= count:
            return files
        time.sleep(0.5)
    return sorted(folder.rglob("*.dcm")) if folder.exists() else []


def _processed(address: str) -> int:
    with control_channel(address) as channel:
        return int(control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5).processed)


def test_a_partner_with_an_endpoint_receives_through_the_central_gateway(
    stack: Stack, central: str, tmp_path: Path
) -> None:
    assert imx(stack, "orgs", "add", "trust-central", "--ae-title", "TRUSTCTR").returncode == 0
    inbox = tmp_path / "partner-inbox"
    inbox.mkdir()  # the partner's folder exists: a missing one is waited for, never made (a share not mounted)
    bad = imx(stack, "partners", "add", "central-partner", "--endpoint", "ftp://nowhere")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stdout, bad.stdout
    added = imx(stack, "partners", "add", "central-partner", "--name", "Has a folder", "--endpoint", inbox.as_uri())
    assert added.returncode == 0 and "central gateway stores" in added.stdout, added.stdout + added.stderr
    assert inbox.as_uri() in imx(stack, "partners", "list").stdout
    route = imx(
        stack,
        "routes",
        "add",
        "central-ct",
        "--partner",
        "central-partner",
        "--profile",
        "basic",
        "--from",
        "trust-central",
        "--modality",
        "CT",
    )
    assert route.returncode == 0, route.stdout + route.stderr

    first = _write_study(tmp_path / "first", 5151)
    sent = imx(stack, "send", str(tmp_path / "first"), "--from", "trust-central")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    files = _wait_for_files(inbox, 4)
    assert len(files) == 4, "the partner ran nothing; the central gateway stored into its folder"
    assert all(dcmread(f).PatientIdentityRemoved == "YES" for f in files)

    # The partner's own key is replaced; the central gateway's key is of another kind and keeps working.
    assert imx(stack, "partners", "reset-key", "central-partner").returncode == 0
    _write_study(tmp_path / "second", 6262)
    assert imx(stack, "send", str(tmp_path / "second"), "--from", "trust-central").returncode == 0
    assert len(_wait_for_files(inbox, 8)) == 8
    assert _processed(central) >= 8

    # The audit trail shows the first study stored (and, after the quiet period, complete) for the partner.
    deadline = time.monotonic() + 60
    while True:
        status = imx(stack, "studies", "status", first)
        row = next((line for line in status.stdout.splitlines() if "central-partner" in line), "")
        if "complete" in row or time.monotonic() > deadline:
            break
        time.sleep(1)
    cells = [c.strip() for c in row.split("│")]
    assert cells[1:8] == ["central-partner", "central-ct", "complete", "4", "4", "4", "4"], status.stdout

    # Removed at run time: its worker stops, nothing more is stored (what is routed to it is quarantined).
    assert imx(stack, "partners", "remove", "central-partner").returncode == 0
    time.sleep(3)
    _write_study(tmp_path / "third", 7373)
    assert imx(stack, "send", str(tmp_path / "third"), "--from", "trust-central").returncode == 0
    time.sleep(5)
    assert len(sorted(inbox.rglob("*.dcm"))) == 8


def _arrival_s(files: Callable[[], list[Path]], count: int, since: float, timeout_s: float = 90) -> float | None:
    """Seconds from `since` until `files()` holds `count` files; None at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(files()) >= count:
            return time.monotonic() - since
        time.sleep(0.2)
    return None


def test_one_partners_pacs_down_delays_no_other_partner_and_loses_nothing(
    stack: Stack, central: str, tmp_path: Path
) -> None:
    pacs_a = start_storescp(tmp_path / "pacs-a", "PACSA")
    pacs_b = start_storescp(tmp_path / "pacs-b", "PACSB")
    try:
        assert imx(stack, "orgs", "add", "trust-two", "--ae-title", "TRUSTTWO").returncode == 0
        for partner, pacs in (("pacs-a", pacs_a), ("pacs-b", pacs_b)):
            assert imx(stack, "partners", "add", partner, "--endpoint", pacs.url).returncode == 0
            route = imx(
                stack,
                "routes",
                "add",
                f"two-{partner}",
                "--partner",
                partner,
                "--profile",
                "basic",
                "--from",
                "trust-two",
                "--modality",
                "CT",
            )
            assert route.returncode == 0, route.stdout + route.stderr

        # Both PACS up: the latency both see.
        _write_study(tmp_path / "s1", 8181, count=6)
        started = time.monotonic()
        assert imx(stack, "send", str(tmp_path / "s1"), "--from", "trust-two").returncode == 0
        normal_a = _arrival_s(pacs_a.files, 6, started)
        normal_b = _arrival_s(pacs_b.files, 6, started)
        assert normal_a is not None and normal_b is not None

        # A's PACS goes down; B's instances keep arriving as fast as before.
        pacs_a.stop()
        _write_study(tmp_path / "s2", 9292, count=6)
        started = time.monotonic()
        assert imx(stack, "send", str(tmp_path / "s2"), "--from", "trust-two").returncode == 0
        during = _arrival_s(pacs_b.files, 12, started)
        assert during is not None, "B's instances arrive while A's PACS is down"
        assert during <= max(3 * normal_b, normal_b + 5), (normal_b, during)
        assert len(pacs_a.files()) == 6

        # A's PACS returns on the same port: its backlog arrives, nothing dead-lettered.
        time.sleep(5)  # A's worker has been waiting for a while
        pacs_a = start_storescp(tmp_path / "pacs-a", "PACSA", port=pacs_a.port)
        assert _arrival_s(pacs_a.files, 12, time.monotonic(), timeout_s=60) is not None, len(pacs_a.files())
        with control_channel(central) as channel:
            status = control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5)
        assert status.failed == 0, "nothing was dead-lettered"
        print(f"latency to B: {normal_b:.1f} s with A up, {during:.1f} s with A down; A: {normal_a:.1f} s")
    finally:
        pacs_a.stop()
        pacs_b.stop()

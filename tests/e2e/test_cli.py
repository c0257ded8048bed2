"""The `imx` command against the running services: organisations, partners and routes administered at
run time, `imx routes test`, `imx send` with its summary, the partner receiving with `imx gateway run`
into a folder, and `imx studies status` showing the study stored and complete for that partner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pydicom import dcmread

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from tests.e2e.stack import ROOT, Stack


def imx(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return imx_with(stack, {}, *args)


def imx_with(stack: Stack, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "IMX_INGEST_GRPC": stack.grpc_address("ingest"),
        "IMX_ROUTING_GRPC": stack.grpc_address("routing"),
        "IMX_DEID_GRPC": stack.grpc_address("deid"),
        "IMX_DELIVERY_GRPC": stack.grpc_address("delivery"),
        "IMX_AUDIT_GRPC": stack.grpc_address("audit"),
        "IMX_KAFKA_BOOTSTRAP": stack.kafka,
        "IMX_MONGO_URI": stack.mongo,
        "IMX_MONGO_DB": stack.db,
        "IMX_TOPIC_PREFIX": stack.prefix,
        "IMX_BLOB_DIR": str(stack.blob_dir),
        "COLUMNS": "200",
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_administer_send_and_receive_with_the_cli(stack: Stack, tmp_path: Path) -> None:
    assert imx(stack, "orgs", "add", "trust-cli", "--ae-title", "TRUSTCLI").returncode == 0
    added = imx(stack, "partners", "add", "cli-partner", "--name", "CLI partner")
    assert added.returncode == 0 and f"{stack.prefix}imx.partner.cli-partner.v1" in added.stdout
    sign_in = dict(re.findall(r"^\s+(bootstrap|username|password|dicomweb key)\s+(\S+)$", added.stdout, re.MULTILINE))
    assert sign_in["bootstrap"] == stack.kafka_partner and sign_in["username"] == "cli-partner"
    route = imx(
        stack,
        "routes",
        "add",
        "cli-mr",
        "--partner",
        "cli-partner",
        "--profile",
        "basic",
        "--from",
        "trust-cli",
        "--modality",
        "MR",
    )
    assert route.returncode == 0, route.stdout + route.stderr
    assert "cli-mr" in imx(stack, "routes", "list").stdout

    folder = tmp_path / "study"
    folder.mkdir()
    for ds in study_instances(plan_study(4242, "MR", 6, "RYB02")):
        (folder / f"{ds.SeriesNumber:02d}{ds.InstanceNumber:03d}.dcm").write_bytes(dataset_to_bytes(ds))
    (folder / "notes.txt").write_text("not DICOM")

    tested = imx(stack, "routes", "test", str(folder / "01001.dcm"), "--from", "trust-cli")
    assert tested.returncode == 0 and "cli-partner" in tested.stdout and "basic" in tested.stdout
    refused = imx(stack, "routes", "test", str(folder / "01001.dcm"), "--from", "somebody-else")
    assert refused.returncode == 1 and "no-route" in refused.stdout

    unknown = imx(stack, "send", str(folder), "--from", "not-registered")
    assert unknown.returncode == 2 and "not registered" in unknown.stdout
    sent = imx(stack, "send", str(folder), "--from", "trust-cli")
    assert sent.returncode == 1, "the text file is rejected, so the exit code says so"
    assert "accepted" in sent.stdout and "rejected: not-dicom" in sent.stdout
    again = imx(stack, "send", str(folder / "01001.dcm"), "--from", "trust-cli")
    assert again.returncode == 0 and "duplicates (already received) │ 1" in again.stdout

    # The partner receives with the gateway, signed in on the partner listener with the user and
    # password it was given, fetching over DICOMweb with its key.
    def gateway(password: str, target: Path, idle_exit: str) -> subprocess.CompletedProcess[str]:
        return imx(
            stack,
            "gateway",
            "run",
            "--partner",
            "cli-partner",
            "--target",
            target.as_uri(),
            "--bootstrap",
            sign_in["bootstrap"],
            "--username",
            sign_in["username"],
            "--password",
            password,
            "--dicomweb-key",
            sign_in["dicomweb key"],
            "--state-dir",
            str(tmp_path / "gateway-state"),
            "--idle-exit",
            idle_exit,
        )

    wrong = gateway("not-it", tmp_path / "x", "5")
    assert wrong.returncode == 1 and "cannot use Kafka" in wrong.stdout, wrong.stdout + wrong.stderr
    assert not (tmp_path / "x").exists()
    out = tmp_path / "received"
    out.mkdir()  # a missing folder is waited for, never made (a share not mounted yet)
    received = gateway(sign_in["password"], out, "15")
    assert received.returncode == 0, received.stdout + received.stderr
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 6
    assert all(dcmread(f).PatientIdentityRemoved == "YES" for f in files)
    assert "studies complete 1" in received.stdout, received.stdout

    # The study, asked for by the UID it was sent with, is stored and complete for the partner.
    study_uid = str(dcmread(folder / "01001.dcm").StudyInstanceUID)
    deadline = time.monotonic() + 60
    while True:
        status = imx(stack, "studies", "status", study_uid)
        row = next((line for line in status.stdout.splitlines() if "cli-partner" in line), "")
        if ("complete" in row and "yes" in row) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status.returncode == 0, status.stdout + status.stderr
    cells = [c.strip() for c in row.split("│")]
    assert cells[1:9] == ["cli-partner", "cli-mr", "complete", "6", "6", "6", "6", "yes"], status.stdout
    unknown_study = imx(stack, "studies", "status", "1.2.3.4.5")
    assert unknown_study.returncode == 1 and "nothing is known" in unknown_study.stdout


def test_control_tokens_roles_and_status_with_the_cli(stack: Stack, tmp_path: Path) -> None:
    issued = imx(stack, "tokens", "add", "cli-operator", "--role", "operator")
    assert issued.returncode == 0, issued.stdout + issued.stderr
    token = re.search(r"^\s+(imx_ctl_\S+)$", issued.stdout, re.MULTILINE)
    assert token is not None
    listed = imx(stack, "tokens", "list")
    assert re.search(r"cli-operator\s+.*operator", listed.stdout) and token.group(1) not in listed.stdout

    as_operator = {"IMX_CONTROL_TOKEN": token.group(1), "IMX_GATEWAYS_GRPC": "127.0.0.1:1"}
    shown = imx_with(stack, as_operator, "status")
    assert shown.returncode == 1, "the gateways address given is unreachable"
    for service in ("ingest", "routing", "deid", "delivery", "audit"):
        assert re.search(rf"{service}\s+│\s+SERVING\s+│\s+no\s+│\s+[\d,]+", shown.stdout), shown.stdout
    assert re.search(r"gateways\s+│\s+unreachable", shown.stdout)
    # An operator pauses and resumes a stage from the command line (the gRPC calls only, before).
    paused = imx_with(stack, as_operator, "pause", "routing")
    assert paused.returncode == 0 and "routing paused" in paused.stdout, paused.stdout + paused.stderr
    assert re.search(r"routing\s+│\s+SERVING\s+│\s+yes", imx_with(stack, as_operator, "status").stdout)
    resumed = imx_with(stack, as_operator, "resume", "routing")
    assert resumed.returncode == 0 and "routing running" in resumed.stdout
    assert re.search(r"routing\s+│\s+SERVING\s+│\s+no", imx_with(stack, as_operator, "status").stdout)
    unknown = imx_with(stack, as_operator, "pause", "everything")
    assert unknown.returncode == 2 and "no service 'everything'" in unknown.stdout
    refused = imx_with(stack, as_operator, "routes", "list")
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stdout

    nowhere = {"IMX_CONTROL_TOKEN": "", "IMX_CONTROL_TOKEN_FILE": str(tmp_path / "absent")}
    missing = imx_with(stack, nowhere, "routes", "list")
    assert missing.returncode == 2 and "IMX_CONTROL_TOKEN_FILE" in missing.stdout
    wrong = imx_with(stack, {"IMX_CONTROL_TOKEN": "imx_ctl_never_issued"}, "routes", "list")
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stdout
    assert imx(stack, "tokens", "remove", "cli-operator").returncode == 0

"""No service log carries a value from its input (issue 9 item 3): instances whose every text-bearing
attribute, UID and character set holds a canary go through every channel (C-STORE, STOW-RS) and every
fault path we have (a profile's refusal, too-deep sequences, a missing UID, unknown VR, unknown transfer
syntax, a deflate bomb, truncation, not DICOM, a failing STOW part, a study mismatch, malformed
multipart, bad headers, half-sent requests), then out through WADO-RS/QIDO-RS and the audit API,
canaries in the queries too; then every service's log is searched: zero canaries.

Named to run after test_pipeline: its quarantines would count towards that module's audit totals."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from services.common.control_channel import control_channel
from services.common.logs import WITHHELD_MESSAGE
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tests.e2e import canaries
from tests.e2e.canaries import CANARIES, TEXT, UID_DIGITS, canary_dataset, part10, uid
from tests.e2e.stack import SERVICES, Stack
from tests.e2e.test_pipeline import storescu
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is installed by make setup"),
]

ORG, AE_TITLE = "canary-trust", "CANARYSCU"
CARE, RESEARCH = "canary-care", "canary-research"
BOUNDARY = "canary-boundary"
GOOD_C_STORE, GOOD_STOW = 3, 3


def _configure(stack: Stack) -> tuple[str, dict[str, str]]:
    with control_channel(stack.grpc_address("ingest")) as channel:
        api_key = (
            admin_pb2_grpc.OrganisationAdminStub(channel)
            .AddOrganisation(
                admin_pb2.AddOrganisationRequest(
                    organisation=admin_pb2.Organisation(org_id=ORG, ae_titles=[AE_TITLE]), issue_api_key=True
                )
            )
            .api_key
        )
    with control_channel(stack.grpc_address("delivery")) as channel:
        partners = admin_pb2_grpc.PartnerAdminStub(channel)
        keys = {
            p: partners.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=p))).dicomweb_key
            for p in (CARE, RESEARCH)
        }
    with control_channel(stack.grpc_address("routing")) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        for route_id, partner, profile in (("canary-care", CARE, ""), ("canary-research", RESEARCH, "research")):
            route = admin_pb2.Route(
                route_id=route_id,
                partner_id=partner,
                profile=profile,
                enabled=True,
                match=admin_pb2.RouteMatch(source_orgs=[ORG]),
            )
            routes.AddRoute(admin_pb2.AddRouteRequest(route=route))
    return api_key, keys


def _multipart(parts: list[bytes], content_type: str = "application/dicom") -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def _stow(stack: Stack, api_key: str, parts: list[bytes], path: str = "/studies", **headers: str) -> httpx.Response:
    return httpx.post(
        stack.stow_url + path,
        content=_multipart(parts),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Authorization": f"Bearer {api_key}",
            **headers,
        },
        timeout=120,
    )


def _raw(port: int, request: bytes, wait_for_answer: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        if not wait_for_answer:
            return b""
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def _send_by_c_store(stack: Stack, folder: Path) -> None:
    good = [canary_dataset(100, n) for n in range(1, GOOD_C_STORE + 1)]
    good[1].SpecificCharacterSet = "ISO_IR 100"
    good[1].PatientName = f"{TEXT}^Müller"
    faulty = [
        canary_dataset(101, 1, charset=canaries.CHARSET),  # a character set no one knows
        canary_dataset(102, 1, burned_in="YES"),  # the research profile refuses it
        canaries.deeply_nested(103, 40),  # deeper than IMX_MAX_SEQUENCE_DEPTH
    ]
    missing_uid = canary_dataset(104, 1)
    del missing_uid.StudyInstanceUID
    faulty.append(missing_uid)
    files = []
    for i, ds in enumerate(good + faulty):
        path = folder / f"c-store-{i}.dcm"
        path.write_bytes(part10(ds))
        files.append(path)
    storescu(stack, AE_TITLE, files[: len(good)])
    for path in files[len(good) :]:  # each refused (storescu exits non-zero) or accepted and quarantined later
        subprocess.run(
            ["storescu", "-aet", AE_TITLE, "-aec", "IMX", "127.0.0.1", str(stack.ingest_dicom), str(path)],
            capture_output=True,
            timeout=120,
        )
    # pynetdicom sends a file's data set undecoded (chunked from the file): what storescu would refuse to read.
    raw = {
        "unknown-vr": canaries.with_unknown_vr(105),
        "bad-length": canaries.with_bad_value_lengths(106),
        "bomb": canaries.deflate_bomb(107, (1 << 30) + (1 << 20)),
    }
    ae = AE(ae_title=AE_TITLE)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [DeflatedExplicitVRLittleEndian])
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", stack.ingest_dicom, ae_title="IMX")
    try:
        assert assoc.is_established
        for name, data in raw.items():
            path = folder / f"{name}.dcm"
            path.write_bytes(data)
            assoc.send_c_store(path)
    finally:
        assoc.release()
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked


def _send_by_stow(stack: Stack, api_key: str) -> None:
    good = [part10(canary_dataset(200, n)) for n in range(1, GOOD_STOW + 1)]
    assert _stow(stack, api_key, good).status_code == 200
    faulty = [
        canaries.not_dicom(),
        canaries.with_unknown_vr(201),
        canaries.with_bad_value_lengths(202),
        canaries.unknown_transfer_syntax(203),
        canaries.truncated(204),
        part10(canaries.deeply_nested(205, 40)),
        part10(canary_dataset(206, 1, charset=canaries.CHARSET)),
    ]
    answer = _stow(stack, api_key, faulty)
    assert answer.status_code in (200, 202, 409), answer.status_code
    bomb = canaries.deflate_bomb(207, (1 << 30) + (1 << 20))
    assert _stow(stack, api_key, [bomb]).status_code == 409
    # A study mismatch (A900), a study path that is no UID, a destination that is no partner id.
    assert _stow(stack, api_key, [part10(canary_dataset(208, 1))], f"/studies/{uid(999)}").status_code == 409
    _stow(stack, api_key, [part10(canary_dataset(209, 1))], f"/studies/{TEXT}%FF{UID_DIGITS}")
    bad_destination = _stow(stack, api_key, [part10(canary_dataset(210, 1))], **{"X-IMX-Destination": f"{TEXT}!"})
    assert bad_destination.status_code == 400
    assert _stow(stack, f"{TEXT}-key", [part10(canary_dataset(211, 1))]).status_code == 401
    malformed = httpx.post(
        stack.stow_url + "/studies",
        content=f"--{TEXT}\r\nContent-Type: application/{TEXT}\r\n\r\n{TEXT}".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/{TEXT}"; boundary={TEXT}',
            "Authorization": f"Bearer {api_key}",
        },
        timeout=30,
    )
    assert malformed.status_code in (400, 415)
    port = stack.ingest_http
    _raw(port, f"POST /dicomweb/studies/{TEXT}".encode() + b"\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
    _raw(port, f"POST /dicomweb/studies HTTP/1.1\r\nHost: {TEXT}\r\nX-{TEXT}: {UID_DIGITS}\r\n".encode(), False)
    _raw(port, f"{TEXT} /{UID_DIGITS} HTTP/9.9\r\n\r\n".encode())


def _query_out(stack: Stack, partner_keys: dict[str, str]) -> None:
    care = {"Authorization": f"Bearer {partner_keys[CARE]}"}
    base = stack.dicomweb_url
    study, series, sop = uid(200), uid(200, 1), uid(200, 2, 1)
    urls = [
        f"{base}/studies?PatientName={TEXT}*&StudyDate={canaries.DATE}&{TEXT}={UID_DIGITS}",
        f"{base}/studies/{study}/series/{series}/instances/{sop}",
        f"{base}/studies/{study}/metadata",
        f"{base}/studies/{uid(998)}/series/{uid(998, 1)}/instances/{uid(998, 2)}",
        f"{base}/studies/{TEXT}/series?{TEXT}=1",
    ]
    for url in urls:
        httpx.get(url, headers=care, timeout=30)
    httpx.get(urls[1], headers={"Authorization": f"Bearer {TEXT}"}, timeout=30)
    audit = stack.audit_headers
    for path in (f"/audit/studies/{study}", f"/audit/events?org={TEXT}&sop_uid={uid(1)}", f"/audit/{TEXT}"):
        httpx.get(stack.audit_url + path, headers=audit, timeout=30)
    httpx.get(f"{stack.audit_url}/audit/summary", headers={"Authorization": f"Bearer {TEXT}"}, timeout=30)


def _delivered(stack: Stack, partner: str) -> int:
    summary = httpx.get(f"{stack.audit_url}/audit/summary", headers=stack.audit_headers, timeout=30).json()
    return int(summary["delivered_by_partner"].get(partner, 0))


def test_no_log_carries_a_canary_from_any_input(stack: Stack, tmp_path: Path) -> None:
    assert stack.log_dir is not None
    api_key, partner_keys = _configure(stack)
    time.sleep(1.5)  # the SCP re-reads calling AE titles every second here (IMX_CALLING_AE_REFRESH_S)

    _send_by_c_store(stack, tmp_path)
    _send_by_stow(stack, api_key)
    good = GOOD_C_STORE + GOOD_STOW
    wait_for(lambda: _delivered(stack, CARE) >= good, 180, "the good canary instances delivered to the care partner")
    _query_out(stack, partner_keys)
    wait_for(lambda: stack.total_lag() == 0, 120, "every stage caught up")
    time.sleep(12)  # half-sent requests are closed after the header timeout (10 s); stragglers log

    logs = {service: (stack.log_dir / f"{service}.log").read_text(errors="replace") for service in SERVICES}
    pattern = re.compile("|".join(re.escape(c) for c in CANARIES), re.IGNORECASE)
    leaks = {service: [line for line in log.splitlines() if pattern.search(line)][:5] for service, log in logs.items()}
    assert {service: lines for service, lines in leaks.items() if lines} == {}, "canaries in the logs"
    # Not vacuous: the fault paths ran and were logged, and the libraries did warn about the input.
    reasons = {
        entry.get("reason")
        for line in logs["ingest"].splitlines()
        if line.startswith("{") and (entry := json.loads(line)).get("org") == ORG
    }
    assert {"not-dicom", "truncated", "too-deep", "inflated-too-large", "missing-uid"} <= reasons, reasons
    assert WITHHELD_MESSAGE in logs["ingest"] and WITHHELD_MESSAGE in logs["deid"]

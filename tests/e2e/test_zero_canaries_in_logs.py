"""No service log carries a value from its input (issue 9 item 3): instances whose every text-bearing
attribute, UID and character set holds a canary go through every channel (C-STORE, STOW-RS) and every
fault path we have (a profile's refusal, too-deep sequences, a missing UID, unknown VR, unknown transfer
syntax, a deflate bomb, truncation, not DICOM, a failing STOW part, a study mismatch, malformed
multipart, bad headers, half-sent requests), then out through WADO-RS/QIDO-RS and the audit API,
canaries in the queries too. Meanwhile the partner-side gateway (`imx gateway run`) of two pass-through
partners fetches what was delivered and stores it: into a folder, and into a PACS that is not listening at
first, then answers out of resources once and refuses some. Then every service's log and both gateways'
are searched: zero canaries."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
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
from tests.e2e.canaries import TEXT, UID_DIGITS, canary_dataset, lines_with_canaries, part10, uid
from tests.e2e.partner_gateway import ScriptedPacs, gateway_process, summary, unsettled
from tests.e2e.stack import SERVICES, Stack
from tests.e2e.test_pipeline import storescu
from tests.waiting import wait_for
from tools.devstack import ManagedProcess, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is installed by make setup"),
]

ORG, AE_TITLE = "canary-trust", "CANARYSCU"
CARE, RESEARCH, PACS = "canary-care", "canary-research", "canary-pacs"  # care and pacs: pass-through
BOUNDARY = "canary-boundary"
GOOD_C_STORE, GOOD_STOW = 3, 3


def _configure(stack: Stack) -> tuple[str, dict[str, admin_pb2.AddPartnerReply]]:
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
        added = {
            p: partners.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=p)))
            for p in (CARE, RESEARCH, PACS)
        }
    with control_channel(stack.grpc_address("routing")) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        for route_id, partner, profile in ((CARE, CARE, ""), (RESEARCH, RESEARCH, "research"), (PACS, PACS, "")):
            route = admin_pb2.Route(
                route_id=route_id,
                partner_id=partner,
                profile=profile,
                enabled=True,
                match=admin_pb2.RouteMatch(source_orgs=[ORG]),
            )
            routes.AddRoute(admin_pb2.AddRouteRequest(route=route))
    return api_key, added


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


def _query_out(stack: Stack, care_key: str) -> None:
    care = {"Authorization": f"Bearer {care_key}"}
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


def _pacs_answer(sop_instance_uid: str, attempt: int) -> int:
    """The first instance of a study is refused (0xC000, cannot understand: dead-lettered at once); the
    second is out of resources the first time (0xA700: retried); the rest are stored."""
    if sop_instance_uid.endswith(".2.1"):
        return 0xC000
    if sop_instance_uid.endswith(".2.2") and attempt == 1:
        return 0xA700
    return 0x0000


def _log_of(gateway: ManagedProcess) -> str:
    assert gateway.alive(), f"{gateway.name} exited:\n{gateway.log_tail()}"
    return gateway.log_path.read_text(errors="replace")


def test_no_log_carries_a_canary_from_any_input(stack: Stack, tmp_path: Path) -> None:
    assert stack.log_dir is not None
    api_key, added = _configure(stack)
    time.sleep(1.5)  # the SCP re-reads calling AE titles every second here (IMX_CALLING_AE_REFRESH_S)

    folder = tmp_path / "care-received"
    folder.mkdir()
    pacs = ScriptedPacs(free_port(), _pacs_answer)  # not listening until the gateway has found it unreachable
    good = GOOD_C_STORE + GOOD_STOW
    with ExitStack() as partner_side:
        partner_side.callback(pacs.stop)  # after both gateways have stopped
        care_gateway = partner_side.enter_context(
            gateway_process(stack, CARE, added[CARE], folder.as_uri(), tmp_path / CARE)
        )
        pacs_gateway = partner_side.enter_context(gateway_process(stack, PACS, added[PACS], pacs.url, tmp_path / PACS))
        _send_by_c_store(stack, tmp_path)
        _send_by_stow(stack, api_key)
        wait_for(
            lambda: min(_delivered(stack, CARE), _delivered(stack, PACS)) >= good,
            180,
            "the good canary instances delivered to the pass-through partners",
        )
        wait_for(lambda: "unreachable" in _log_of(pacs_gateway), 60, "the gateway finding its PACS unreachable")
        pacs.start()
        _query_out(stack, added[CARE].dicomweb_key)
        wait_for(lambda: stack.total_lag() == 0, 120, "every stage caught up")
        time.sleep(12)  # half-sent requests are closed after the header timeout (10 s); stragglers log
        delivered = {partner: _delivered(stack, partner) for partner in (CARE, PACS)}
        wait_for(
            lambda: all(
                _log_of(g) and unsettled(stack, p) == 0 for p, g in ((CARE, care_gateway), (PACS, pacs_gateway))
            ),
            120,
            "both gateways settling everything delivered to them",
            interval_s=1,
        )
    # Both gateways stopped (SIGTERM): each log ends with its summary.

    logs = {service: (stack.log_dir / f"{service}.log").read_text(errors="replace") for service in SERVICES}
    logs |= {g.name: g.log_path.read_text(errors="replace") for g in (care_gateway, pacs_gateway)}
    leaks = {name: lines_with_canaries(log) for name, log in logs.items()}
    assert {name: lines for name, lines in leaks.items() if lines} == {}, "canaries in the logs"
    # Not vacuous: the fault paths ran and were logged, and the libraries did warn about the input.
    reasons = {
        entry.get("reason")
        for line in logs["ingest"].splitlines()
        if line.startswith("{") and (entry := json.loads(line)).get("org") == ORG
    }
    assert {"not-dicom", "truncated", "too-deep", "inflated-too-large", "missing-uid"} <= reasons, reasons
    assert WITHHELD_MESSAGE in logs["ingest"] and WITHHELD_MESSAGE in logs["deid"]
    # The gateways logged their progress: every delivered instance stored into the folder; into the PACS,
    # once it listened, the second instance of each good study after a retry, and every first instance
    # (and what the PACS could not take) dead-lettered.
    assert summary(logs[care_gateway.name]) == (delivered[CARE], 0, 0), logs[care_gateway.name]
    assert len(list(folder.rglob("*.dcm"))) == delivered[CARE]
    pacs_log = logs[pacs_gateway.name]
    stored, retried, dead_lettered = summary(pacs_log)
    assert (stored, dead_lettered) == (good - 2, delivered[PACS] - (good - 2)), pacs_log
    assert retried >= 3 and "unreachable (connection-failed)" in pacs_log and "failed (0xA700)" in pacs_log, pacs_log

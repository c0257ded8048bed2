"""The whole pipeline with real DICOM clients: dcmtk's storescu (C-STORE) and dicomweb-client (STOW-RS)
send 200 instances from a trust; a care partner gets them identifiable, a research partner
de-identified; audit shows every hop; bad input and unroutable input are quarantined; a re-send
creates no duplicate deliveries."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from services.common.control_channel import control_channel
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import StudyPlan, plan_study, study_instances
from services.common.events import EVENT_TYPE_HEADER
from services.common.topics import Topics
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from tests.e2e.stack import Stack
from tests.integration.bus_helpers import read_all

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is installed by make setup"),
]

TRUST_AE, OTHER_AE = "TRUSTA", "TRUSTB"
CARE, RESEARCH = "care", "research"


@dataclass
class Sent:
    plans: list[StudyPlan]
    files: dict[str, Path]  # SOP Instance UID -> file
    c_store_files: list[Path]
    api_key: str
    partner_keys: dict[str, str]  # partner id -> its DICOMweb key


def dataset_part(data: bytes) -> bytes:
    """A Part 10 file without preamble and file meta: what C-STORE and STOW-RS carry as "the instance"."""
    assert data[128:132] == b"DICM"
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) File Meta Information Group Length
    return data[144 + meta_length :]


def storescu(stack: Stack, ae: str, files: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-xe", "-aet", ae, "-aec", "IMX", "127.0.0.1", str(stack.ingest_dicom), *map(str, files)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def configure(stack: Stack) -> tuple[str, dict[str, str]]:
    with control_channel(stack.grpc_address("ingest")) as channel:
        orgs = admin_pb2_grpc.OrganisationAdminStub(channel)
        key = orgs.AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(org_id="trust-a", ae_titles=[TRUST_AE]), issue_api_key=True
            )
        ).api_key
        orgs.AddOrganisation(
            admin_pb2.AddOrganisationRequest(
                organisation=admin_pb2.Organisation(org_id="trust-b", ae_titles=[OTHER_AE])
            )
        )
    with control_channel(stack.grpc_address("delivery")) as channel:
        partners = admin_pb2_grpc.PartnerAdminStub(channel)
        partner_keys = {
            partner: partners.AddPartner(
                admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=partner))
            ).dicomweb_key
            for partner in (CARE, RESEARCH)
        }
    with control_channel(stack.grpc_address("routing")) as channel:
        routes = admin_pb2_grpc.RoutingAdminStub(channel)
        routes.AddRoute(
            admin_pb2.AddRouteRequest(
                route=admin_pb2.Route(
                    route_id="care-transfer",
                    partner_id=CARE,
                    enabled=True,
                    match=admin_pb2.RouteMatch(source_orgs=["trust-a"]),
                )
            )
        )
        routes.AddRoute(
            admin_pb2.AddRouteRequest(
                route=admin_pb2.Route(
                    route_id="research",
                    partner_id=RESEARCH,
                    profile="research",
                    enabled=True,
                    # Only this module's sender: the stack is shared, and a route matching every
                    # organisation would take other tests' studies (and answer their `routes test`).
                    match=admin_pb2.RouteMatch(source_orgs=["trust-a"], modalities=["CT", "MR"]),
                )
            )
        )
    return key, partner_keys


def wait_for(stack: Stack, condition, timeout_s: float = 300) -> dict:  # type: ignore[no-untyped-def, type-arg]
    deadline = time.monotonic() + timeout_s
    summary: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        try:
            summary = httpx.get(f"{stack.audit_url}/audit/summary", timeout=30, headers=stack.audit_headers).json()
        except httpx.TransportError as error:  # the service is gone: show why, not just "connection refused"
            tail = stack.log_tail("audit")
            raise AssertionError(f"audit API unreachable ({error!r}); its log ends:\n{tail}") from None
        if condition(summary):
            return summary
        time.sleep(1)
    raise AssertionError(f"pipeline did not get there in {timeout_s}s: {summary}")


@pytest.fixture(scope="module")
def sent(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Sent:
    api_key, partner_keys = configure(stack)
    # Failures and quarantines are counted across the shared stack: other modules' count from here.
    earlier = _failed_or_quarantined(wait_for(stack, lambda s: True))
    time.sleep(1.5)  # the SCP re-reads calling AE titles every second in this test (IMX_CALLING_AE_REFRESH_S)
    root = tmp_path_factory.mktemp("data")
    plans = [plan_study(900 + i, modality, 50, "RXA01") for i, modality in enumerate(["CT", "CT", "MR", "MR"])]
    files: dict[str, Path] = {}
    by_modality: dict[str, list[Path]] = {"CT": [], "MR": []}
    for plan in plans:
        for ds in study_instances(plan):
            path = root / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(dataset_to_bytes(ds))
            files[str(ds.SOPInstanceUID)] = path
            by_modality[plan.modality].append(path)

    storescu(stack, TRUST_AE, by_modality["CT"])  # C-STORE, dcmtk
    client = DICOMwebClient(url=stack.stow_url, headers={"Authorization": f"Bearer {api_key}"})
    for start in range(0, len(by_modality["MR"]), 25):  # STOW-RS, dicomweb-client
        client.store_instances([dcmread(p) for p in by_modality["MR"][start : start + 25]])

    unroutable = root / "unroutable.dcm"
    unroutable.write_bytes(dataset_to_bytes(next(study_instances(plan_study(990, "CR", 1, "RZC03")))))
    storescu(stack, OTHER_AE, [unroutable])
    boundary = "imx-e2e-boundary"
    corrupt = httpx.post(
        f"{stack.stow_url}/studies",
        content=f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + b"not a dicom file at all"
        + f"\r\n--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Authorization": f"Bearer {api_key}",
        },
        timeout=30,
    )
    assert corrupt.status_code == 409, "every part failed: PS3.18 says 409"
    assert corrupt.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]

    wait_for(
        stack,
        lambda s: (
            s["delivered_by_partner"].get(CARE, 0)
            + s["delivered_by_partner"].get(RESEARCH, 0)
            + _failed_or_quarantined(s)
            - earlier
            >= 402
        ),
    )
    return Sent(plans, files, by_modality["CT"], api_key, partner_keys)


def _failed_or_quarantined(summary: dict[str, dict[str, int]]) -> int:
    return sum(summary["failed_by_partner"].values()) + sum(summary["quarantined_by_reason"].values())


def feed(stack: Stack, partner: str, expected: int, timeout_s: float) -> list[tuple[str, bytes]]:
    """(event type, value) of every message on the partner's feed."""
    records = read_all(stack.kafka, Topics(stack.prefix).partner(partner), expected=expected, timeout_s=timeout_s)
    return [(dict(r.headers)[EVENT_TYPE_HEADER].decode(), r.value) for r in records]


def deliveries(stack: Stack, partner: str, expected: int, timeout_s: float = 60) -> list[events_pb2.PartnerDelivery]:
    return [
        events_pb2.PartnerDelivery.FromString(value)
        for kind, value in feed(stack, partner, expected, timeout_s)
        if kind == "PartnerDelivery"
    ]


def fetch(delivery: events_pb2.PartnerDelivery, key: str) -> httpx.Response:
    """What the partner's gateway does with a reference on its feed: WADO-RS with its own key."""
    return httpx.get(
        delivery.retrieval_url,
        headers={"Authorization": f"Bearer {key}", "Accept": "application/dicom"},
        timeout=30,
    )


def fetched(delivery: events_pb2.PartnerDelivery, key: str) -> bytes:
    response = fetch(delivery, key)
    assert response.status_code == 200, response.status_code
    data = response.content
    assert (len(data), hashlib.sha256(data).hexdigest()) == (delivery.blob.size, delivery.blob.sha256)
    return data


def test_the_care_partner_receives_every_instance_byte_identical(stack: Stack, sent: Sent) -> None:
    received = deliveries(stack, CARE, 200)
    assert len(received) == 200
    assert {d.instance.sop_instance_uid for d in received} == set(sent.files)
    for delivery in received:
        original = sent.files[delivery.instance.sop_instance_uid].read_bytes()
        assert not delivery.deidentified
        assert len(delivery.SerializeToString()) < 2048, "the feed carries a reference, not the image"
        assert dataset_part(fetched(delivery, sent.partner_keys[CARE])) == dataset_part(original)


def test_each_study_is_announced_complete_with_the_manifest_of_what_was_delivered(stack: Stack, sent: Sent) -> None:
    delivered = {d.instance.sop_instance_uid: d for d in deliveries(stack, CARE, 200)}
    # The e2e stack's quiet period is 3 s (IMX_DELIVERY_STUDY_QUIET_S); the sweep runs every 0.75 s.
    deadline = time.monotonic() + 60
    complete: dict[str, events_pb2.StudyComplete] = {}
    while len(complete) < len(sent.plans) and time.monotonic() < deadline:
        for kind, value in feed(stack, CARE, 200 + len(sent.plans), timeout_s=5):
            if kind == "StudyComplete":
                event = events_pb2.StudyComplete.FromString(value)
                complete[event.study_instance_uid] = event
    assert set(complete) == {plan.study_instance_uid for plan in sent.plans}
    for study, event in complete.items():
        assert event.count == 50 == len(event.instances)
        for entry in event.instances:
            delivery = delivered[entry.sop_instance_uid]
            assert delivery.instance.study_instance_uid == study
            assert (entry.sha256, entry.size, entry.delivery_id) == (
                delivery.blob.sha256,
                delivery.blob.size,
                delivery.meta.event_id,
            )


def test_a_partner_that_has_read_nothing_shows_its_whole_backlog_against_the_retention(
    stack: Stack, sent: Sent
) -> None:
    """Nobody runs a gateway for the care partner in this test: all of its feed is unread."""
    deliveries(stack, CARE, 200)
    deadline = time.monotonic() + 30
    backlog = None
    while time.monotonic() < deadline:
        with control_channel(stack.grpc_address("delivery")) as channel:
            reply = admin_pb2_grpc.PartnerAdminStub(channel).PartnerLag(admin_pb2.PartnerLagRequest(), timeout=10)
        backlog = {b.partner_id: b for b in reply.partners}.get(CARE)
        if backlog is not None and backlog.unread >= 200:
            break
        time.sleep(1)
    assert backlog is not None and backlog.unread >= 200, backlog
    assert backlog.retention_ms == 7 * 24 * 3600 * 1000 and backlog.expired == 0
    assert 0 <= backlog.retention_used < 0.01


def test_a_partner_cannot_fetch_what_was_sent_to_another(stack: Stack, sent: Sent) -> None:
    delivery = deliveries(stack, CARE, 200)[0]
    assert fetch(delivery, sent.partner_keys[RESEARCH]).status_code == 404, "not 403: existence is not confirmed"
    assert fetch(delivery, "imxp_not-a-key").status_code == 401


def test_the_research_partner_receives_no_seeded_phi_anywhere(stack: Stack, sent: Sent) -> None:
    received = deliveries(stack, RESEARCH, 200)
    assert len(received) == 200
    kept_by_profile = {"PatientSex", "PatientAge", "StudyDescription", "StudyTime"}  # research keeps these
    needles: set[bytes] = set()
    short_numbers: set[str] = set()  # e.g. a 4-digit Study ID: checked as whole element values, since
    # as a substring it turns up by chance inside the random decimal digits of remapped 2.25 UIDs
    for plan in sent.plans:
        for where, value in plan.phi().items():
            if where in kept_by_profile:
                continue
            if value.isdigit() and len(value) < 8:
                short_numbers.add(value)
                continue
            needles.add(value.encode())
            # Name parts and address words on their own too; short numbers (a house number) would
            # match inside random UIDs, so only words are split out.
            needles.update(p.encode() for p in re.split(r"[\^ ,]+", value) if len(p) >= 4 and p.isalpha())
    original_uids = {uid.encode() for uid in sent.files} | {p.study_instance_uid.encode() for p in sent.plans}
    for delivery in received:
        assert delivery.deidentified and delivery.profile == "research"
        data = fetched(delivery, sent.partner_keys[RESEARCH])
        leaked = [n.decode() for n in needles if n in data]
        assert not leaked, f"seeded PHI found in a de-identified copy ({len(leaked)} values)"
        assert not any(uid in data for uid in original_uids), "original UIDs are remapped everywhere"
        ds = dcmread(BytesIO(data))
        values = {str(elem.value) for elem in _elements(ds) if elem.VR not in ("SQ", "OB", "OW", "UN")}
        assert not values & short_numbers, "a seeded number survives as an element value"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID == delivery.instance.sop_instance_uid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def _elements(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)


def test_the_audit_trail_of_every_study_shows_every_hop(stack: Stack, sent: Sent) -> None:
    anonymous = httpx.get(f"{stack.audit_url}/audit/studies/{sent.plans[0].study_instance_uid}", timeout=30)
    assert anonymous.status_code == 401, "the trail is for analysts with a key only"
    for plan in sent.plans:
        trail = httpx.get(
            f"{stack.audit_url}/audit/studies/{plan.study_instance_uid}", timeout=30, headers=stack.audit_headers
        ).json()
        counts = Counter(event["event_type"] for event in trail["events"])
        assert counts["ingested"] == 50
        for hop in ("routed", "prepared", "outcome"):
            assert counts[hop] == 100, f"{hop}: one per instance and destination"
        assert trail["received"][0]["source_org"] == "trust-a"
        destinations = {d["partner_id"]: d for d in trail["destinations"]}
        assert set(destinations) == {CARE, RESEARCH}
        assert destinations[RESEARCH]["profile"] == "research"


def test_corrupt_and_unroutable_inputs_are_quarantined_with_reasons_in_audit(stack: Stack, sent: Sent) -> None:
    reasons: Counter[tuple[str, str]] = Counter()
    for org in ("trust-a", "trust-b"):  # other tests on the shared stack send as other organisations
        page = httpx.get(
            f"{stack.audit_url}/audit/events",
            params={"event_type": "quarantined", "org": org},
            timeout=30,
            headers=stack.audit_headers,
        ).json()
        reasons.update((e["stage"], e["reason"]) for e in page["events"])
    assert reasons == Counter({("ingest", "not-dicom"): 1, ("routing", "no-route"): 1})


def settled_events(stack: Stack, timeout_s: float = 30) -> dict[str, int]:
    """The audit's events by type once the pipeline is idle and two reads 3 s apart agree: earlier
    tests' partner fetches are recorded as retrieval events after their answers, and gateway receipts
    linger up to a second, so a first read can still be short of what is on its way."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, int] | None = None
    while True:
        while stack.total_lag() and time.monotonic() < deadline:
            time.sleep(0.5)
        summary = httpx.get(f"{stack.audit_url}/audit/summary", timeout=30, headers=stack.audit_headers).json()
        events: dict[str, int] = summary["events_by_type"]
        if events == last or time.monotonic() > deadline:
            return events
        last = events
        time.sleep(3)


def test_resending_a_study_creates_no_duplicate_deliveries(stack: Stack, sent: Sent) -> None:
    before = settled_events(stack)
    storescu(stack, TRUST_AE, sent.c_store_files)  # every response arrives after ingest decided
    assert settled_events(stack) == before
    assert len(deliveries(stack, CARE, 201, timeout_s=10)) == 200, "nothing more reaches the partner"

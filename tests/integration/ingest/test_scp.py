"""C-STORE and C-ECHO against the running service, with pynetdicom (and dcmtk when installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from services.common.blob_store import LocalBlobStore, sha256_hex
from services.common.dicom.header import inspect_instance
from services.common.stores.organisations import Organisation, OrganisationStore
from tests.integration.ingest.conftest import SenderOrg
from tests.integration.ingest.helpers import RunningIngest, ingested_events
from tests.unit.ingest.samples import mr_study


def _associate(ingest: RunningIngest, calling_ae: str):
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", ingest.endpoints.dicom_port, ae_title=ingest.endpoints.ae_title)


def _store(ingest: RunningIngest, calling_ae: str, files: list[Path]) -> list[int]:
    assoc = _associate(ingest, calling_ae)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def _write(tmp_path: Path, instances: tuple[bytes, ...]) -> list[Path]:
    paths = []
    for i, data in enumerate(instances):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_c_store_from_a_known_ae_is_stored_and_announced(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str, tmp_path: Path
) -> None:
    instances = mr_study(101, n=2)
    files = _write(tmp_path, instances)

    assert _store(ingest, sender.ae_title, files) == [0x0000, 0x0000]

    wanted = {inspect_instance(d, 10**9).sop_instance_uid for d in instances}
    events = [e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid in wanted]
    assert len(events) == 2
    blobs = LocalBlobStore(ingest.settings.blob_dir)
    for event in events:
        assert (event.source_org, event.channel) == ("trust-a", "c-store")
        assert event.instance.modality == "MR" and event.instance.sop_class_uid == str(MRImageStorage)
        assert event.routing_attributes["modality"] == "MR"
        # What the sender sent arrives as bytes, without pydicom re-encoding: parse what was stored.
        stored = blobs.get(event.blob.sha256)
        assert sha256_hex(stored) == event.blob.sha256 and event.blob.size == len(stored)
        assert inspect_instance(stored, 10**9).sop_instance_uid == event.instance.sop_instance_uid


def test_an_unknown_calling_ae_is_refused_at_association(ingest: RunningIngest) -> None:
    assoc = _associate(ingest, "STRANGER")
    assert assoc.is_rejected
    assert not assoc.is_established


def test_c_echo_is_answered(ingest: RunningIngest, sender: SenderOrg) -> None:
    assoc = _associate(ingest, sender.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_an_organisation_added_at_run_time_can_send_without_a_restart(
    ingest: RunningIngest, organisations: OrganisationStore, tmp_path: Path
) -> None:
    assert _associate(ingest, "NEWCOMER").is_rejected
    organisations.add(Organisation("newcomer", "Newcomer", ("NEWCOMER",)))
    deadline = time.monotonic() + 10
    while True:
        assoc = _associate(ingest, "NEWCOMER")
        if assoc.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert assoc.is_established
    assoc.release()
    assert _store(ingest, "NEWCOMER", _write(tmp_path, mr_study(102, n=1))) == [0x0000]


def test_the_same_instance_sent_twice_is_announced_once(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str, tmp_path: Path
) -> None:
    instance = mr_study(103, n=1)
    files = _write(tmp_path, instance)
    assert _store(ingest, sender.ae_title, files) == [0x0000]
    assert _store(ingest, sender.ae_title, files) == [0x0000]  # success for the sender, nothing new

    uid = inspect_instance(instance[0], 10**9).sop_instance_uid
    assert len([e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid == uid]) == 1


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
def test_dcmtk_storescu_sends_a_folder(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str, tmp_path: Path
) -> None:
    instances = mr_study(104, n=3)
    _write(tmp_path, instances)
    # Debian's DCMTK leaves Nagle on: every response would wait ~40 ms (FIELD-NOTES).
    env = {**os.environ, "TCP_NODELAY": "1"}
    run = subprocess.run(
        [
            "storescu",
            "-aet",
            sender.ae_title,
            "-aec",
            ingest.endpoints.ae_title,
            "+sd",
            "+r",
            "127.0.0.1",
            str(ingest.endpoints.dicom_port),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr

    wanted = {inspect_instance(d, 10**9).sop_instance_uid for d in instances}
    events = [e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid in wanted]
    assert len(events) == 3 and {e.channel for e in events} == {"c-store"}


def test_several_associations_at_once_are_each_served(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str, tmp_path: Path
) -> None:
    studies = [mr_study(110 + i, n=3) for i in range(4)]
    folders = []
    for i, study in enumerate(studies):
        folder = tmp_path / str(i)
        folder.mkdir()
        folders.append(_write(folder, study))

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda files: _store(ingest, sender.ae_title, files), folders))

    assert statuses == [[0x0000] * 3] * 4
    wanted = {inspect_instance(d, 10**9).sop_instance_uid for study in studies for d in study}
    events = [e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid in wanted]
    assert len(events) == 12

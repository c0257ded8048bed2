"""Receipts are kept for their retention, not for ever: the running service removes the old ones, and an
instance resent after that is published again (under the same event id)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.dicom.header import inspect_instance
from services.ingest.file_receipts import receipts_folder
from services.ingest.sender import send_with_settings
from services.ingest.settings import IngestSettings
from tests.integration.ingest.conftest import SenderOrg
from tests.integration.ingest.helpers import RunningIngest, ingested_events, make_settings
from tests.unit.ingest.samples import mr_study

RETENTION_S = 5.0


@pytest.fixture(scope="module")
def ingest_settings(kafka_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> IngestSettings:
    settings = make_settings(kafka_bootstrap, mongo_uri, tmp_path_factory)
    return settings.model_copy(update={"receipt_retention_s": RETENTION_S, "receipt_prune_interval_s": 0.2})


def _receipt_names(root: Path) -> list[Path]:
    return [path for path in receipts_folder(root).rglob("*") if path.is_symlink() and "procs" not in path.parts]


def test_a_resend_is_a_duplicate_within_the_retention_and_published_again_after_it(
    ingest: RunningIngest, sender: SenderOrg, kafka_bootstrap: str, tmp_path: Path
) -> None:
    data = mr_study(303, n=1)[0]
    (tmp_path / "image.dcm").write_bytes(data)
    sop_uid = inspect_instance(data, 10**9).sop_instance_uid

    started = time.monotonic()
    first = send_with_settings([tmp_path], source_org=sender.org_id, settings=ingest.settings)
    again = send_with_settings([tmp_path], source_org=sender.org_id, settings=ingest.settings)
    assert time.monotonic() - started < RETENTION_S, "the machine is too slow for this test's retention"
    assert (first.accepted, again.accepted, again.duplicates) == (1, 0, 1)
    assert len(_receipt_names(ingest.settings.blob_dir)) == 1

    deadline = time.monotonic() + RETENTION_S + 30
    while _receipt_names(ingest.settings.blob_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _receipt_names(ingest.settings.blob_dir) == [], "the service removed the receipt past its retention"

    later = send_with_settings([tmp_path], source_org=sender.org_id, settings=ingest.settings)
    assert (later.accepted, later.duplicates) == (1, 0)
    events = [e for e in ingested_events(kafka_bootstrap, ingest.topics) if e.instance.sop_instance_uid == sop_uid]
    assert len(events) == 2 and events[0].meta.event_id == events[1].meta.event_id

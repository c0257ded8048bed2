"""`imx send` as a library: walking folders, one acceptance per file, a summary by outcome."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.common.publish_refusals import RecordRefused
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance
from services.ingest.errors import InvalidDestination, UnknownOrganisation
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.sender import (
    PathNotFound,
    PathUnreadable,
    SendAborted,
    SendProgress,
    find_files,
    send,
    send_with_settings,
    walk_inputs,
)
from services.ingest.settings import IngestSettings
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import NOT_DICOM, RecordingBus, mr_study

TOPICS = Topics("t-")


class Orgs:
    def exists(self, org_id: str) -> bool:
        return org_id == "trust-a"


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def acceptance(tmp_path: Path, bus: RecordingBus) -> Acceptance:
    return Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        receipts=MemoryReceiptStore(),
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=200_000,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    (root / "series1" / "deeper").mkdir(parents=True)
    a, b = mr_study(5, n=2)
    (root / "series1" / "a.dcm").write_bytes(a)
    (root / "series1" / "deeper" / "b").write_bytes(b)
    (root / "series1" / "copy-of-a.dcm").write_bytes(a)
    (root / "README.txt").write_bytes(NOT_DICOM)
    (root / "huge.bin").write_bytes(b"\0" * 300_000)
    return root


# What `folder` holds, in the walk's order.
IN_FOLDER = ["README.txt", "huge.bin", "series1/a.dcm", "series1/copy-of-a.dcm", "series1/deeper/b"]


def test_find_files_walks_folders_once_in_a_stable_order(folder: Path) -> None:
    files = find_files([folder, folder / "series1" / "a.dcm"])
    assert [f.relative_to(folder).as_posix() for f in files] == IN_FOLDER


def test_hidden_entries_are_not_inputs_and_broken_links_are_counted(folder: Path) -> None:
    (folder / ".git").mkdir()
    (folder / ".git" / "index").write_bytes(b"DIRC")
    (folder / "series1" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "series1" / "gone").symlink_to(folder / "moved-away.dcm")
    found = walk_inputs([folder, folder / "series1" / ".DS_Store"])  # named explicitly: taken
    assert [f.relative_to(folder).as_posix() for f in found.files] == [*IN_FOLDER, "series1/.DS_Store"]
    assert found.broken_links == 1


def test_linked_folders_are_walked_once_dicomdirs_skipped_and_unlisted_folders_counted(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subfolder that was a link (PACS exports, mounted shares) or could not be listed was left out in
    silence, and the run said everything was sent; a CD's DICOMDIR was quarantined on every run."""
    elsewhere = folder / ".store"  # hidden: walked only through the link
    elsewhere.mkdir()
    (elsewhere / "c.dcm").write_bytes(mr_study(5, n=2)[0])
    (folder / "series2").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(folder)  # back to the top: walked once, not for ever
    (folder / "DICOMDIR").write_bytes(b"a CD's index")
    (folder / "locked").mkdir()
    real_scandir = os.scandir

    def refusing(path: object) -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refusing)
    found = walk_inputs([folder])
    assert [f.relative_to(folder).as_posix() for f in found.files] == [*IN_FOLDER, "series2/c.dcm"]
    assert (found.dicomdirs, found.unreadable) == (1, 1)


def test_a_link_leaving_the_folder_given_is_not_followed(folder: Path, tmp_path: Path) -> None:
    """`up -> ..` sent other patients' studies (to whatever partner `--to` named); a link to / walked the
    machine."""
    other_patient = tmp_path / "JONES_MARY"
    other_patient.mkdir()
    (other_patient / "1.dcm").write_bytes(mr_study(6, n=2)[0])
    (folder / "up").symlink_to(tmp_path)
    (folder / "everything").symlink_to("/")
    (folder / "series1" / "inside").symlink_to(folder / "series1" / "deeper")  # inside, already walked
    found = walk_inputs([folder])
    assert [f.relative_to(folder).as_posix() for f in found.files] == IN_FOLDER
    assert found.links_outside == 2


def test_a_missing_path_is_an_error_that_does_not_name_it(tmp_path: Path) -> None:
    missing = tmp_path / "SMITH^JOHN"
    with pytest.raises(PathNotFound) as caught:
        find_files([tmp_path, missing])
    assert "SMITH" not in str(caught.value) and caught.value.path == missing


def test_send_summarises_by_outcome_and_reports_progress(
    folder: Path, acceptance: Acceptance, bus: RecordingBus
) -> None:
    seen: list[SendProgress] = []
    (folder / "gone.dcm").symlink_to(folder / "moved-away.dcm")
    summary = send(
        [folder],
        source_org="trust-a",
        acceptance=acceptance,
        organisations=Orgs(),
        to="research-1",
        progress=seen.append,
    )

    assert (summary.sent, summary.accepted, summary.duplicates) == (5, 2, 1)
    assert summary.rejected == {"not-dicom": 1, "too-large": 1} and summary.rejected_total == 2
    assert summary.broken_links == 1  # not sent, but said
    assert [p.done for p in seen] == [1, 2, 3, 4, 5] and seen[-1].bytes_done == seen[-1].bytes_total
    events = [events_pb2.InstanceIngested.FromString(m.value) for m in bus.on(TOPICS.ingested)]
    assert {(e.channel, e.requested_destination) for e in events} == {("cli", "research-1")}
    assert {events_pb2.Quarantined.FromString(m.value).reason for m in bus.on(TOPICS.quarantine)} == {
        "not-dicom",
        "too-large",
    }


def test_an_unknown_organisation_is_a_clear_error(folder: Path, acceptance: Acceptance) -> None:
    with pytest.raises(UnknownOrganisation, match="not registered"):
        send([folder], source_org="nobody", acceptance=acceptance, organisations=Orgs())


def test_an_invalid_destination_is_refused_before_sending(
    folder: Path, acceptance: Acceptance, bus: RecordingBus
) -> None:
    with pytest.raises(InvalidDestination):
        send([folder], source_org="trust-a", acceptance=acceptance, organisations=Orgs(), to="Bad Partner")
    assert not bus.messages


def test_a_failing_bus_stops_the_run_with_what_was_sent(
    folder: Path, acceptance: Acceptance, bus: RecordingBus
) -> None:
    files = [folder / "series1" / "a.dcm", folder / "series1" / "deeper" / "b"]
    send(files[:1], source_org="trust-a", acceptance=acceptance, organisations=Orgs())
    bus.fail = 1
    with pytest.raises(SendAborted) as caught:
        send(files, source_org="trust-a", acceptance=acceptance, organisations=Orgs())
    assert caught.value.summary.duplicates == 1 and caught.value.summary.sent == 1


def test_a_file_whose_event_the_broker_refuses_is_counted_and_the_others_still_go(
    folder: Path, acceptance: Acceptance, bus: RecordingBus
) -> None:
    files = [folder / "series1" / "a.dcm", folder / "series1" / "deeper" / "b"]
    bus.fail, bus.failure = 1, RecordRefused("publish refused: MessageSizeTooLargeError")
    seen: list[SendProgress] = []

    summary = send(files, source_org="trust-a", acceptance=acceptance, organisations=Orgs(), progress=seen.append)

    assert (summary.sent, summary.accepted, summary.rejected) == (2, 1, {"refused-by-broker": 1})
    assert [p.outcome for p in seen] == ["refused-by-broker", "accepted"]
    again = send(files[:1], source_org="trust-a", acceptance=acceptance, organisations=Orgs())
    assert again.accepted == 1, "sent again once the topic takes it, the refused file is accepted, not a duplicate"


def test_what_needs_no_server_is_checked_before_waiting_for_one(tmp_path: Path) -> None:
    """A mistyped path or destination waited up to 30 s for a broker before being reported."""
    nowhere = IngestSettings(
        kafka_bootstrap="127.0.0.1:1", mongo_uri="mongodb://127.0.0.1:1/", blob_dir=tmp_path / "blobs"
    )
    with pytest.raises(PathNotFound):
        send_with_settings([tmp_path / "missing"], source_org="trust-a", settings=nowhere, broker_wait_s=0.1)
    with pytest.raises(InvalidDestination):
        send_with_settings([tmp_path], source_org="trust-a", settings=nowhere, to="Not A Partner!", broker_wait_s=0.1)


def test_a_path_whose_kind_cannot_be_read_is_named_by_position_not_by_name(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that may be listed but not entered made is_dir() raise PermissionError: the traceback
    printed its path, and exported studies' folder names carry patients' names."""
    secret = folder / "DOE^JOHN_1961"
    real_is_dir = Path.is_dir

    def guarded(path: Path) -> bool:
        if path == secret:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_dir(path)

    monkeypatch.setattr(Path, "is_dir", guarded)
    with pytest.raises(PathUnreadable) as refused:
        walk_inputs([folder, secret])
    assert str(refused.value) == "path 2 of 2 cannot be read (Permission denied)"
    assert "DOE" not in str(refused.value)

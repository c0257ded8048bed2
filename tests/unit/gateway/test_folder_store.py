"""The folder target: UIDs cannot escape the root, writes are atomic, the same object twice is stored once."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway import folder_store
from services.gateway.fetched import Fetched
from services.gateway.folder_store import FolderStore, UnsafeUid, path_for
from services.gateway.scratch_files import _host_prefix
from services.gateway.targets import FolderTarget
from services.proto_gen.imx.v1 import events_pb2


def _delivery(data: bytes, study: str = "1.2.3", series: str = "1.2.3.4", sop: str = "1.2.3.4.5"):  # type: ignore[no-untyped-def]
    return events_pb2.PartnerDelivery(
        instance=events_pb2.InstanceRef(study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop),
        blob=events_pb2.BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
    )


# Mostly text of UID characters (so paths are built, not only refused), and any text besides.
@given(st.one_of(st.from_regex(r"[0-9.]{1,70}", fullmatch=True), st.text(max_size=80)))
def test_only_dicom_uids_become_path_components(uid: str) -> None:
    root = Path("/srv/root")
    instance = events_pb2.InstanceRef(study_instance_uid=uid, series_instance_uid="1.2", sop_instance_uid="1.3")
    try:
        path = path_for(root, instance)
    except UnsafeUid:
        return
    assert path.resolve().is_relative_to(root) and path.parent.parent == root / uid
    assert set(uid) <= set("0123456789.") and ".." not in uid


def made(folder: Path) -> Path:
    folder.mkdir()
    return folder


def test_a_missing_root_is_waited_for_and_never_made(tmp_path: Path) -> None:
    """A share not mounted yet: the gateway made the folder on the local disk under the mount point,
    wrote there and reported STORED; the share, mounted later, hid those files for good."""
    root = tmp_path / "share" / "imx"
    (tmp_path / "share").mkdir()  # the mount point, the share not mounted on it
    result = FolderStore(FolderTarget(root)).store(Fetched(data=b"x"), _delivery(b"x"))
    assert (result.ok, result.unavailable, result.status_detail) == (False, True, "folder-missing")
    assert not root.exists()


@pytest.mark.parametrize("uid", ["..", "../../etc", "/etc/passwd", "1.2/../3", "1..2", ".1", "1" * 65, ""])
def test_hostile_uids_are_refused(uid: str, tmp_path: Path) -> None:
    result = FolderStore(FolderTarget(made(tmp_path / "root"))).store(Fetched(data=b"x"), _delivery(b"x", sop=uid))
    assert (result.ok, result.retryable, result.status_detail) == (False, False, "invalid-uid")


def test_an_instance_is_written_under_study_series_sop_and_a_second_copy_is_already_present(tmp_path: Path) -> None:
    source = tmp_path / "fetched.dcm"
    source.write_bytes(b"DICM-bytes")
    store = FolderStore(FolderTarget(made(tmp_path / "root")))
    delivery = _delivery(b"DICM-bytes")
    assert store.store(Fetched.in_file(source), delivery).status_detail == "written"
    written = tmp_path / "root" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert written.read_bytes() == b"DICM-bytes"
    assert store.store(Fetched(data=b"DICM-bytes"), delivery).status_detail == "already-present"
    assert [p.name for p in written.parent.iterdir()] == [written.name], "no temp files left behind"


def test_a_different_object_under_the_same_uids_replaces_the_old_one(tmp_path: Path) -> None:
    store = FolderStore(FolderTarget(made(tmp_path / "root")))
    for content in (b"first", b"second"):
        assert store.store(Fetched(data=content), _delivery(content)).ok
    assert (tmp_path / "root" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm").read_bytes() == b"second"


def test_files_get_the_mode_a_new_file_gets_not_the_temp_files_0600(tmp_path: Path) -> None:
    """An importer running as another user could not read what the receipt called STORED."""
    import os

    old = os.umask(0o022)
    try:
        store = FolderStore(FolderTarget(made(tmp_path / "root")))
    finally:
        os.umask(old)
    assert store.store(Fetched(data=b"DICM-bytes"), _delivery(b"DICM-bytes")).ok
    written = tmp_path / "root" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert written.stat().st_mode & 0o777 == 0o644


def test_new_study_and_series_folders_are_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the file's own folder was fsynced: a power cut could lose a new study's folder, and the file
    in it, after its receipt went out."""
    synced: list[Path] = []
    monkeypatch.setattr(folder_store, "fsync_directory", lambda folder: synced.append(Path(folder)))
    monkeypatch.setattr("services.common.blob_store.fsync_directory", lambda folder: synced.append(Path(folder)))
    assert FolderStore(FolderTarget(made(tmp_path / "root"))).store(Fetched(data=b"x"), _delivery(b"x")).ok
    root = tmp_path / "root"
    assert {root, root / "1.2.3", root / "1.2.3" / "1.2.3.4"} <= set(synced)


def test_a_target_that_is_a_file_is_said_so_and_refused_by_the_command(tmp_path: Path) -> None:
    """It was reported as `folder-missing` and waited for for ever, and `imx gateway run` started on it."""
    from typer.testing import CliRunner

    from services.cli.main import app

    not_a_folder = tmp_path / "export.txt"
    not_a_folder.write_text("a file")
    result = FolderStore(FolderTarget(not_a_folder)).store(Fetched(data=b"x"), _delivery(b"x"))
    assert (result.ok, result.unavailable, result.status_detail) == (False, True, "folder-is-a-file")

    args = ["--partner", "p", "--target", f"file://{not_a_folder}", "--bootstrap", "127.0.0.1:9", "--username", "p"]
    env = {"IMX_GATEWAY_PASSWORD": "x", "IMX_GATEWAY_DICOMWEB_KEY": "k"}
    ran = CliRunner().invoke(app, ["gateway", "run", *args, "--state-dir", str(tmp_path / "state")], env=env)
    assert ran.exit_code == 2 and "is a file, not a folder" in " ".join(ran.output.split()), ran.output


def test_a_killed_runs_partial_file_is_never_beside_the_partners_objects_and_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    """Files were written as `.tmp-*` in the series folder: a SIGKILL part way left half an object there
    for good, where an importer scanning every file could take it."""
    root = made(tmp_path / "root")
    incoming = root / ".imx-incoming"
    incoming.mkdir()
    killed = incoming / f"{_host_prefix()}999999.1-k2j3h4.part"  # a process of this host that is gone
    killed.write_bytes(b"half an object")
    store = FolderStore(FolderTarget(root))

    def torn(source: Fetched, out: object, mode: int) -> None:
        raise OSError(5, "I/O error")  # the write fails part way, as a kill would leave it

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(folder_store, "_copy", torn)
        assert not store.store(Fetched(data=b"x"), _delivery(b"x")).ok
    assert not killed.exists(), "the killed run's partial file is removed"
    assert list(incoming.iterdir()) == [], "nor is the failed write's left"
    assert [p.name for p in (root / "1.2.3" / "1.2.3.4").iterdir()] == []
    assert store.store(Fetched(data=b"x"), _delivery(b"x")).ok
    assert [p.name for p in (root / "1.2.3" / "1.2.3.4").iterdir()] == ["1.2.3.4.5.dcm"]


def test_the_incoming_folder_removed_under_a_running_gateway_is_made_again(tmp_path: Path) -> None:
    """It was made once: removed (someone clearing hidden folders), every later instance failed with
    os-error-2, spent its attempts and was dead-lettered until the gateway restarted."""
    root = made(tmp_path / "root")
    store = FolderStore(FolderTarget(root))
    assert store.store(Fetched(data=b"one"), _delivery(b"one", sop="1.1")).ok
    shutil.rmtree(root / ".imx-incoming")
    outcomes = [store.store(Fetched(data=b"two"), _delivery(b"two", sop="1.2")) for _ in range(2)]
    assert outcomes[-1].ok, [o.status_detail for o in outcomes]
    assert (root / "1.2.3" / "1.2.3.4" / "1.2.dcm").read_bytes() == b"two"


def test_an_instance_found_already_present_has_its_name_and_folders_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed after the rename, before the folders' fsyncs: the next run found the file, fsynced
    nothing, and its STORED receipt let imx delete its own copy of what a power loss could take back."""
    root = made(tmp_path / "pacs")
    store = FolderStore(FolderTarget(root))
    assert store.store(Fetched(data=b"x"), _delivery(b"x")).ok
    synced: list[Path] = []
    monkeypatch.setattr(folder_store, "fsync_directory", lambda folder: synced.append(Path(folder)))
    again = FolderStore(FolderTarget(root)).store(Fetched(data=b"x"), _delivery(b"x"))
    assert (again.ok, again.status_detail) == (True, "already-present")
    assert synced == [root / "1.2.3" / "1.2.3.4", root / "1.2.3", root]

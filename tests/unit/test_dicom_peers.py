"""What a benchmark reads from the PACS's folder while it runs: the files storescp wrote, by name."""

from __future__ import annotations

from pathlib import Path

from tools.dicom_peers import StoreScp, arrived_entries


def _pacs(folder: Path) -> StoreScp:
    return StoreScp(process=None, port=0, ae_title="PACS", folder=folder)  # type: ignore[arg-type]


def test_counts_and_lists_received_files_in_nested_folders_but_not_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "CT.1").write_bytes(b"a")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "CT.2").write_bytes(b"b")
    (tmp_path / ".partial").write_bytes(b"c")  # not yet a received file
    (tmp_path / "empty").mkdir()

    pacs = _pacs(tmp_path)

    assert pacs.count() == 2
    assert sorted(pacs.files()) == [tmp_path / "CT.1", tmp_path / "study" / "CT.2"]


def test_a_folder_not_yet_made_holds_nothing(tmp_path: Path) -> None:
    assert _pacs(tmp_path / "later").count() == 0
    assert list(arrived_entries(tmp_path / "later")) == []

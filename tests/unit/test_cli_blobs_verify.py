"""`imx blobs`: `verify`, the scrub that rehashes the store, since the pipeline's reads check sizes only;
and the figures `usage` and `gc` show for spliced objects."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from services.cli import blobs
from services.cli.blobs import _size
from services.cli.main import app
from services.common.blob_lifecycle import scan
from services.common.blob_store import LocalBlobStore

runner = CliRunner()


def test_a_sound_store_passes_and_a_changed_object_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    sound = [store.put(f"object {n}".encode()) for n in range(3)]
    monkeypatch.setenv("IMX_BLOB_DIR", str(store.root))

    passed = runner.invoke(app, ["blobs", "verify"])
    assert passed.exit_code == 0, passed.output
    assert "all 3 objects" in passed.output

    store.path_for(sound[1]).write_bytes(b"object X")  # same size: the pipeline's reads would not notice
    failed = runner.invoke(app, ["blobs", "verify"])
    assert failed.exit_code == 1
    assert sound[1] in failed.output
    assert sound[0] not in failed.output and sound[2] not in failed.output


SOURCE = bytes(range(256)) * 2048  # 512 KB, as an ingest blob
OFFSET = 3000
HEAD = b"new header " * 300
WHOLE = HEAD + SOURCE[OFFSET:]
DAY = 24 * 3600.0


def _said(result: Result) -> str:
    """The output as one line: the console wraps long lines at the terminal's width."""
    return " ".join(result.output.split())


def _spliced_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalBlobStore, str, str]:
    store = LocalBlobStore(tmp_path / "blobs")
    source = store.put(SOURCE)
    sha, _ = store.put_spliced(HEAD, memoryview(SOURCE)[OFFSET:], source, OFFSET)
    assert store.splice_path_for(sha).exists() and not store.path_for(sha).exists()
    monkeypatch.setenv("IMX_BLOB_DIR", str(store.root))
    return store, source, sha


def test_the_bar_and_the_summary_count_the_bytes_hashed_not_a_spliced_objects_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, sha = _spliced_store(tmp_path, monkeypatch)
    entries = {entry.name: entry for entry in scan(store.root)}
    assert entries[sha + ".splice"].size < len(HEAD) + 200
    assert entries[sha + ".splice"].logical_size == len(WHOLE)

    passed = runner.invoke(app, ["blobs", "verify"])
    assert passed.exit_code == 0, passed.output
    assert "all 2 objects (1.0 MB read) match their hashes" in _said(passed), "not 515 KB: the record's size"


def test_an_object_stored_both_whole_and_spliced_is_checked_in_each_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, source, sha = _spliced_store(tmp_path, monkeypatch)
    store.path_for(sha).write_bytes(WHOLE)  # written whole as well, e.g. before its source existed
    passed = runner.invoke(app, ["blobs", "verify"])
    assert passed.exit_code == 0, passed.output
    assert "all 2 objects" in _said(passed) and "1 stored both whole and spliced, each checked" in _said(passed)

    record = store.splice_path_for(sha)
    record.write_bytes(record.read_bytes().replace(b"new header", b"NEW HEADER"))  # same size: only a rehash sees it
    failed = runner.invoke(app, ["blobs", "verify"])
    assert failed.exit_code == 1
    assert "1 of 2 objects" in _said(failed)
    assert f"{sha} (spliced)" in failed.output and f"{sha} (whole)" not in failed.output
    assert source not in failed.output
    assert "NEW HEADER" not in failed.output and "new header" not in failed.output


def test_a_spliced_object_whose_source_changed_is_named_by_its_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, source, sha = _spliced_store(tmp_path, monkeypatch)
    store.path_for(source).write_bytes(SOURCE[:-1] + b"X")  # bit rot in the shared tail

    failed = runner.invoke(app, ["blobs", "verify"])
    assert failed.exit_code == 1
    assert "2 of 2 objects" in _said(failed)
    assert sha in failed.output and source in failed.output
    assert "(spliced)" not in failed.output, "one form each: no form named"


def test_usage_says_it_counts_a_spliced_object_by_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, sha = _spliced_store(tmp_path, monkeypatch)
    monkeypatch.setattr(blobs, "_owed", set)  # what partners are owed comes from MongoDB (integration tests)
    record = store.splice_path_for(sha).stat().st_size

    shown = runner.invoke(app, ["blobs", "usage"])
    assert shown.exit_code == 0, shown.output
    said = _said(shown)
    assert "on disk" in said and "a spliced object is its record" in said
    assert f"all │ 2 │ {_size(len(SOURCE) + record)}" in said
    assert f"of which spliced (records) │ 1 │ {_size(record)}" in said


def test_gc_says_how_many_sources_a_kept_spliced_object_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, source, sha = _spliced_store(tmp_path, monkeypatch)
    monkeypatch.setattr(blobs, "_owed", set)
    old = time.time() - 10 * DAY
    os.utime(store.path_for(source), (old, old))

    kept = runner.invoke(app, ["blobs", "gc", "--retention-days", "7"])
    assert kept.exit_code == 0, kept.output
    assert "deleted 0 objects" in _said(kept)
    assert "and 1 that a kept spliced object refers to" in _said(kept)
    assert store.path_for(source).exists()

    os.utime(store.splice_path_for(sha), (old, old))
    dry = runner.invoke(app, ["blobs", "gc", "--retention-days", "7", "--dry-run"])
    assert "would delete 2 objects" in _said(dry) and "and 0 that a kept spliced object refers to" in _said(dry)
    assert store.exists(sha) and store.exists(source)


def test_gc_removes_and_names_the_temporaries_a_dead_writer_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, _ = _spliced_store(tmp_path, monkeypatch)
    monkeypatch.setattr(blobs, "_owed", set)
    stale, live = store.root / ".tmp-c-store-1.dcm", store.root / ".tmp-c-store-2.dcm"
    stale.write_bytes(b"x" * 2048)
    live.write_bytes(b"x" * 10)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    dry = runner.invoke(app, ["blobs", "gc", "--dry-run"])
    assert "would delete 1 temporary files (2.0 KB) left by writers that stopped" in _said(dry), dry.output
    assert stale.exists()
    done = runner.invoke(app, ["blobs", "gc"])
    assert done.exit_code == 0 and "deleted 1 temporary files" in _said(done)
    assert not stale.exists() and live.exists()
    assert "temporary" not in _said(runner.invoke(app, ["blobs", "gc"])), "nothing to say when there are none"


@pytest.mark.parametrize("command", ["verify", "usage", "gc"])
def test_a_blob_dir_that_is_not_a_store_is_named_not_made(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped IMX_BLOB_DIR was made, empty, and `verify` said "all 0 objects match their hashes"."""
    (tmp_path / "a-file").write_text("")
    for where in (tmp_path / "typo", tmp_path / "a-file"):
        monkeypatch.setenv("IMX_BLOB_DIR", str(where))
        result = runner.invoke(app, ["blobs", command])
        assert result.exit_code == 2 and "no blob store at" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "typo").exists()

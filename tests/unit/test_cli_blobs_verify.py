"""`imx blobs verify`: the scrub that rehashes the store, since the pipeline's reads check sizes only."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app
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

"""`imx gateway dead-letters`: a damaged dead-letter file is named, not skipped in silence or raised as a
traceback; a malformed delivery id and a mistyped --state-dir are usage errors (the folder is not made)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.cli.main import app
from services.gateway.records import DeadLetters, UnreadableDeadLetter
from services.gateway.worker import state_paths

runner = CliRunner()
REPLAY = ["gateway", "dead-letters", "replay", "--target", "file:///tmp/nowhere", "--dicomweb-key", "k"]


def _damaged(state_dir: Path) -> Path:
    folder = state_paths(state_dir)[2]
    folder.mkdir(parents=True)
    (folder / "abc123.json").write_text("{ not json")
    return folder


def test_a_damaged_dead_letter_is_named_by_list_and_by_replay(tmp_path: Path) -> None:
    folder = _damaged(tmp_path / "state")
    listed = runner.invoke(app, ["gateway", "dead-letters", "list", "--state-dir", str(tmp_path / "state")])
    assert listed.exit_code == 1 and "abc123.json" in listed.output and "do not hold a dead letter" in listed.output
    try:
        DeadLetters(folder).get("abc123")
    except UnreadableDeadLetter:
        pass
    else:
        raise AssertionError("a damaged file read as no dead letter at all")


def test_a_malformed_id_and_a_missing_state_folder_are_usage_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, [*REPLAY, "../../etc/passwd", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2 and "not a delivery id" in result.output
    result = runner.invoke(app, [*REPLAY, "--all", "--state-dir", str(tmp_path / "typo")])
    assert result.exit_code == 2 and "no dead letters" in " ".join(result.output.split())
    assert not (tmp_path / "typo").exists(), "a mistyped --state-dir was made"

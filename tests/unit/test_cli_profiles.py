"""`imx profiles add`: a JSON file, renamed, with the command line's options and overrides on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from services.cli.profiles import build_document
from services.deid.profile_documents import profile_from_document


def test_file_options_and_overrides_merge_with_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    saved = {"name": "old", "version": 4, "options": ["clean-descriptors"], "overrides": {"(0008,103E)": "K"}}
    path.write_text(json.dumps(saved))
    doc = build_document("new", path, ["retain-uids"], ["(0008,103E)=X", "PatientSex = K"])
    assert doc == {
        "name": "new",
        "options": ["clean-descriptors", "retain-uids"],
        "overrides": {"(0008,103E)": "X", "PatientSex": "K"},
    }
    assert profile_from_document(doc).version == "1"


@pytest.mark.parametrize("override", ["(0010,0010)", "=K", "(0010,0010)="])
def test_an_override_without_tag_and_action_is_refused(override: str) -> None:
    with pytest.raises(typer.Exit):
        build_document("p", None, [], [override])

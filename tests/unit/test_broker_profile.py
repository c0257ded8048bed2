"""How `make profile` asks the broker's JVM to load async-profiler, and what it says when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import broker_profile
from tools.broker_profile import NotProfiled, agent_command, ensure_library


def test_the_agent_options_are_one_quoted_word_for_jcmd() -> None:
    argv = agent_command(42, Path("/lib/ap.so"), "start", event="itimer", interval="5ms", threads="")
    assert argv == ["jcmd", "42", "JVMTI.agent_load", "/lib/ap.so", '"start,event=itimer,interval=5ms,threads"']


def test_without_maven_the_broker_is_not_profiled_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_profile, "library_path", lambda: tmp_path / "absent" / "libasyncProfiler.so")
    monkeypatch.setattr(broker_profile.shutil, "which", lambda name: None)
    with pytest.raises(NotProfiled, match="mvn and jcmd"):
        ensure_library()
    assert not (tmp_path / "absent").exists()


def test_a_library_already_unpacked_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = tmp_path / "libasyncProfiler.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setattr(broker_profile, "library_path", lambda: library)
    monkeypatch.setattr(broker_profile.shutil, "which", lambda name: None)  # never asked for
    assert ensure_library() == library

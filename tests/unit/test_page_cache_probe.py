"""The page-cache probe measures real work and leaves nothing behind."""

from pathlib import Path

import pytest

from tools.page_cache_probe import anonymous_touch_s, file_write_s, main, sparse_map_first_write_s


def test_a_file_write_is_timed_and_removed(tmp_path: Path) -> None:
    target = tmp_path / "probe.bin"
    cpu, wall = file_write_s(target, size=8 << 20)
    assert cpu > 0 and wall > 0
    assert not target.exists()


def test_anonymous_memory_is_timed() -> None:
    cpu, wall = anonymous_touch_s(size=8 << 20)
    assert cpu > 0 and wall > 0


def test_a_sparse_index_write_is_timed_and_removed(tmp_path: Path) -> None:
    target = tmp_path / "index"
    assert sparse_map_first_write_s(target, size=1 << 20) >= 0
    assert not target.exists()


def test_the_command_prints_both_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "sub" / "probe.bin")]) == 0
    out = capsys.readouterr().out
    assert "anonymous 512 MB" in out and "page cache 512 MB" in out
    assert "mapped sparse index, 10 MiB" in out and "1 MiB" in out
    assert not (tmp_path / "sub" / "probe.bin").exists()

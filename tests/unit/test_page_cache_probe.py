"""The page-cache probe measures real work and leaves nothing behind."""

import os
from pathlib import Path

import pytest

from tools.page_cache_probe import (
    anonymous_touch_s,
    ext4_journal,
    file_create_us,
    file_write_s,
    main,
    sparse_map_first_write_s,
)


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
    assert "a new file:" in out and "us CPU" in out
    assert not (tmp_path / "sub" / "probe.bin").exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_file_creation_is_timed_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    assert file_create_us(folder, count=50) > 0
    assert not folder.exists()


def test_the_journal_is_read_from_the_kernels_ext4_folder(tmp_path: Path) -> None:
    target = tmp_path / "probe"
    target.write_bytes(b"")
    device = target.stat().st_dev
    sys_root = tmp_path / "sys"
    (sys_root / "dev" / "block").mkdir(parents=True)
    (sys_root / "fs" / "ext4" / "vdz").mkdir(parents=True)
    (sys_root / "block" / "vdz").mkdir(parents=True)
    (sys_root / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}").symlink_to(sys_root / "block" / "vdz")
    task = sys_root / "fs" / "ext4" / "vdz" / "journal_task"
    task.write_text("<none>\n")
    assert ext4_journal(target, sys_root) is False
    task.write_text("jbd2/vdz-8\n")
    assert ext4_journal(target, sys_root) is True
    task.unlink()
    assert ext4_journal(target, sys_root) is None
